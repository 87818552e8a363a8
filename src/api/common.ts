// Constants shared by the API schemas, the agent and the browser (no Node imports here:
// the web console bundles the same action definitions).
export const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
export const IMAGE_FORMATS = ['qcow2', 'raw', 'vhdx', 'vpc'] as const;
export type ImageFormat = (typeof IMAGE_FORMATS)[number];
export type Role = 'host' | 'admin';
/**
 * The console user an admin certificate (the web console's) speaks for, `console:NAME`, and
 * that user's console role: the agent's audit trail records them instead of the certificate.
 */
export const ACTOR_HEADER = 'x-ferry-actor';
export const ACTOR_ROLE_HEADER = 'x-ferry-actor-role';
export const FIRMWARES = ['bios', 'uefi'] as const;
export type Firmware = (typeof FIRMWARES)[number];
export const DISPLAYS = ['vga', 'none'] as const;
export const DISK_ROLES = ['data', 'uefi-vars'] as const;
export const CDROM_ROLES = ['media', 'cloud-init'] as const;
