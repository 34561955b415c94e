import Database from 'better-sqlite3';
import { BangerError } from '../api/errors.js';

/**
 * One daemon per state dir. The lock is an exclusive SQLite (fcntl) lock held for the process's
 * life: the kernel drops it when the process dies, so a crashed daemon never leaves a stale lock.
 */
export class DaemonLock {
  private constructor(private readonly db: Database.Database) {}

  static acquire(path: string): DaemonLock {
    const db = new Database(path);
    db.pragma('busy_timeout = 0');
    try {
      db.pragma('locking_mode = EXCLUSIVE');
      db.exec('CREATE TABLE IF NOT EXISTS holder (pid INTEGER)');
      db.exec('BEGIN EXCLUSIVE');
      db.prepare('DELETE FROM holder').run();
      db.prepare('INSERT INTO holder (pid) VALUES (?)').run(process.pid);
    } catch (e) {
      db.close();
      if ((e as { code?: string }).code?.startsWith('SQLITE_BUSY')) {
        throw new BangerError('conflict', `another bangerd already owns ${path}`, {
          fix: 'use the running daemon (`banger daemon status`), stop it (`banger daemon stop`), or set BANGER_HOME to run an isolated one',
        });
      }
      throw e;
    }
    return new DaemonLock(db);
  }

  release(): void {
    try {
      this.db.exec('ROLLBACK');
    } catch {
      /* already released */
    }
    this.db.close();
  }
}
