// Constants shared by the API schemas, the agent and the browser (no Node imports here:
// the web console bundles the same action definitions).
export const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
export const IMAGE_FORMATS = ['qcow2', 'raw', 'vhdx', 'vpc'] as const;
export type ImageFormat = (typeof IMAGE_FORMATS)[number];
export type Role = 'host' | 'admin';
