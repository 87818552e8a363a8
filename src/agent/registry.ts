// The agent's own state that survives restarts (better-sqlite3): which VMs this host owns
// and where their folders are, switches, pools, settings, migration records and the move
// journal. A VM's config itself is its vm.json; QEMU's run state is read live, never stored.
// With synchronous = FULL every write is on disk when the call returns, except the ones a
// caller marks as not needing it (a record's progress, a journal entry that adds nothing for
// recovery): those skip the fsync (5 ms here, on the move's path) and become durable with the
// next durable write, as WAL commits are ordered.
import Database from 'better-sqlite3';
import type { PoolDef, PoolKind } from '../storage/pools.js';
import type { SwitchView } from '../api/schemas.js';
import type { MigrationRecord } from '../migration/schemas.js';
import { JournalEntry } from '../migration/journal.js';

export interface VmRecord {
  name: string;
  id: string;
  configPath: string;
  createdAt: string;
}

export class Registry {
  private db: Database.Database;
  /** Prepared once: preparing a statement on every call cost more than running it. */
  private stmts = new Map<string, Database.Statement>();

  constructor(file: string) {
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS vms (
        name TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE, config_path TEXT NOT NULL, created_at TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS switches (name TEXT PRIMARY KEY, kind TEXT NOT NULL, bridge TEXT);
      CREATE TABLE IF NOT EXISTS pools (name TEXT PRIMARY KEY, kind TEXT NOT NULL, path TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS migrations (
        id TEXT PRIMARY KEY, vm TEXT NOT NULL, state TEXT NOT NULL, record TEXT NOT NULL, created_at TEXT NOT NULL);
      CREATE TABLE IF NOT EXISTS move_journal (
        move_id TEXT NOT NULL, seq INTEGER NOT NULL, entry TEXT NOT NULL, PRIMARY KEY (move_id, seq));
    `);
  }

  close(): void {
    this.db.close();
  }

  private stmt(sql: string): Database.Statement {
    let st = this.stmts.get(sql);
    if (!st) {
      st = this.db.prepare(sql);
      this.stmts.set(sql, st);
    }
    return st;
  }

  /** Runs a write without waiting for the disk: it becomes durable with the next (FULL) write. */
  private lazily<T>(fn: () => T): T {
    this.stmt('PRAGMA synchronous = NORMAL').run();
    try {
      return fn();
    } finally {
      this.stmt('PRAGMA synchronous = FULL').run();
    }
  }

  listVms(): VmRecord[] {
    return this.stmt(
      'SELECT name, id, config_path AS configPath, created_at AS createdAt FROM vms ORDER BY name',
    ).all() as VmRecord[];
  }
  getVm(name: string): VmRecord | undefined {
    return this.stmt('SELECT name, id, config_path AS configPath, created_at AS createdAt FROM vms WHERE name = ?').get(
      name,
    ) as VmRecord | undefined;
  }
  getVmById(id: string): VmRecord | undefined {
    return this.stmt('SELECT name, id, config_path AS configPath, created_at AS createdAt FROM vms WHERE id = ?').get(
      id,
    ) as VmRecord | undefined;
  }
  addVm(r: VmRecord): void {
    this.stmt('INSERT INTO vms (name, id, config_path, created_at) VALUES (?, ?, ?, ?)').run(
      r.name,
      r.id,
      r.configPath,
      r.createdAt,
    );
  }
  updateVmPath(name: string, configPath: string): void {
    this.stmt('UPDATE vms SET config_path = ? WHERE name = ?').run(configPath, name);
  }
  removeVm(name: string): void {
    this.stmt('DELETE FROM vms WHERE name = ?').run(name);
  }

  listSwitches(): SwitchView[] {
    return this.stmt('SELECT name, kind, bridge FROM switches ORDER BY name').all() as SwitchView[];
  }
  addSwitch(s: SwitchView): void {
    this.stmt('INSERT INTO switches (name, kind, bridge) VALUES (?, ?, ?)').run(s.name, s.kind, s.bridge);
  }
  removeSwitch(name: string): void {
    this.stmt('DELETE FROM switches WHERE name = ?').run(name);
  }

  listPools(): PoolDef[] {
    return this.stmt('SELECT name, kind, path FROM pools ORDER BY name').all() as PoolDef[];
  }
  upsertPool(p: { name: string; kind: PoolKind; path: string }): void {
    this.stmt(
      'INSERT INTO pools (name, kind, path) VALUES (?, ?, ?) ' +
        'ON CONFLICT(name) DO UPDATE SET kind = excluded.kind, path = excluded.path',
    ).run(p.name, p.kind, p.path);
  }

  getSetting<T>(key: string, fallback: T): T {
    const row = this.stmt('SELECT value FROM settings WHERE key = ?').get(key) as { value: string } | undefined;
    return row ? (JSON.parse(row.value) as T) : fallback;
  }
  setSetting(key: string, value: unknown): void {
    this.stmt(
      'INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value',
    ).run(key, JSON.stringify(value));
  }

  /** Not fsynced: recovery reads the journal, and the record is durable with the move's next journal write. */
  saveMigration(r: MigrationRecord): void {
    this.lazily(() =>
      this.stmt(
        'INSERT INTO migrations (id, vm, state, record, created_at) VALUES (?, ?, ?, ?, ?) ' +
          'ON CONFLICT(id) DO UPDATE SET state = excluded.state, record = excluded.record',
      ).run(r.id, r.vm, r.state, JSON.stringify(r), r.createdAt),
    );
  }
  getMigration(id: string): MigrationRecord | undefined {
    const row = this.stmt('SELECT record FROM migrations WHERE id = ?').get(id) as { record: string } | undefined;
    return row ? (JSON.parse(row.record) as MigrationRecord) : undefined;
  }
  listMigrations(limit: number): MigrationRecord[] {
    return (
      this.stmt('SELECT record FROM migrations ORDER BY created_at DESC LIMIT ?').all(limit) as Array<{
        record: string;
      }>
    )
      .map((r) => JSON.parse(r.record) as MigrationRecord)
      .reverse();
  }

  /**
   * Appends one entry of a move's journal; a second entry with the same seq is refused
   * (E_CONSTRAINT). `durable: false` for an entry recovery can do without (see MoveStore).
   */
  journalAppend(moveId: string, entry: JournalEntry, opts: { durable?: boolean } = {}): void {
    const insert = (): void => {
      this.stmt('INSERT INTO move_journal (move_id, seq, entry) VALUES (?, ?, ?)').run(
        moveId,
        entry.seq,
        JSON.stringify(entry),
      );
    };
    if (opts.durable === false) this.lazily(insert);
    else insert();
  }
  journalRead(moveId: string): JournalEntry[] {
    const rows = this.stmt('SELECT entry FROM move_journal WHERE move_id = ? ORDER BY seq').all(moveId) as Array<{
      entry: string;
    }>;
    return rows.map((r) => JournalEntry.parse(JSON.parse(r.entry)));
  }
  journalMoves(): string[] {
    const rows = this.stmt('SELECT DISTINCT move_id FROM move_journal ORDER BY move_id').all() as Array<{
      move_id: string;
    }>;
    return rows.map((r) => r.move_id);
  }
  journalDrop(moveId: string): void {
    this.stmt('DELETE FROM move_journal WHERE move_id = ?').run(moveId);
  }
}
