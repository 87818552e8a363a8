// Certificate lifetimes, apart from the signer so that the CLI can show them in its help
// without loading the PKI code.
export const DEFAULT_HOST_DAYS = 30;
export const MAX_HOST_DAYS = 365;
export const DEFAULT_ADMIN_DAYS = 365;
