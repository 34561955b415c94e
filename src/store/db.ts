import { existsSync } from 'node:fs';
import Database from 'better-sqlite3';
import { BangerError } from '../api/errors.js';
import { LATEST_VERSION, MIGRATIONS } from './migrations.js';

export type Db = Database.Database;

/** Every connection gets the same pragmas: WAL for concurrent readers, a busy timeout, and enforced foreign keys. */
export function openDb(path: string, options: { readonly?: boolean } = {}): Db {
  const db = new Database(path, { readonly: options.readonly ?? false, fileMustExist: options.readonly ?? false });
  if (!options.readonly) db.pragma('journal_mode = WAL');
  db.pragma('busy_timeout = 5000');
  db.pragma('foreign_keys = ON');
  if (!options.readonly) db.pragma('synchronous = NORMAL');
  return db;
}

export function schemaVersion(db: Db): number {
  return db.pragma('user_version', { simple: true }) as number;
}

/** Applies pending migrations, each in its own transaction. Refuses a store newer than this binary. */
export function migrate(db: Db): { from: number; to: number } {
  const from = schemaVersion(db);
  if (from > LATEST_VERSION) {
    throw new BangerError('precondition_failed', `the store is at schema version ${from}, newer than this banger (${LATEST_VERSION})`, {
      fix: 'upgrade banger to the version that last wrote this store',
    });
  }
  for (const m of MIGRATIONS) {
    if (m.version <= from) continue;
    db.transaction(() => {
      db.exec(m.sql);
      db.pragma(`user_version = ${m.version}`);
    })();
  }
  return { from, to: schemaVersion(db) };
}

export type MigrationStatus = { status: 'current' | 'needed' | 'newer'; current: number; latest: number };

/** Read-only check used by `bangerd --check-migrations` and `banger doctor`. */
export function checkMigrations(path: string): MigrationStatus {
  if (!existsSync(path)) return { status: 'needed', current: 0, latest: LATEST_VERSION };
  const db = openDb(path, { readonly: true });
  try {
    const current = schemaVersion(db);
    const status = current === LATEST_VERSION ? 'current' : current < LATEST_VERSION ? 'needed' : 'newer';
    return { status, current, latest: LATEST_VERSION };
  } finally {
    db.close();
  }
}
