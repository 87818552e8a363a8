// The console's roles, least to most; apart from roles.ts (the table over the API's actions)
// so that the CLI can name them in its help without loading the API's schemas.
export const CONSOLE_ROLES = ['viewer', 'operator', 'admin'] as const;
export type ConsoleRole = (typeof CONSOLE_ROLES)[number];
