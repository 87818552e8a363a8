// @types/novnc__novnc describes noVNC under its old path (lib/rfb); the package's own entry
// point (`@novnc/novnc`, core/rfb.js) exports the same class.
/// <reference types="novnc__novnc" />
declare module '@novnc/novnc' {
  import RFB from '@novnc/novnc/lib/rfb';
  export default RFB;
}
