// Where an installed host keeps its configuration, key and data (the package's layout), apart
// from the code that writes them so that the CLI can show them in its help without loading it.
export const DEFAULT_CONFIG = '/etc/ferry/agent.json';
export const DEFAULT_TLS_DIR = '/etc/ferry/tls';
export const DEFAULT_DATA_DIR = '/var/lib/ferry';
