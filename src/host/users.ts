import { readFileSync } from 'node:fs';

export interface UserIds {
  uid: number;
  gid: number;
}

/** Pure: a user from /etc/passwd text, or a numeric `uid:gid`; undefined when unknown. */
export function lookupUserIn(passwd: string, user: string): UserIds | undefined {
  const numeric = /^(\d{1,10}):(\d{1,10})$/.exec(user);
  if (numeric) return { uid: Number(numeric[1]), gid: Number(numeric[2]) };
  for (const line of passwd.split('\n')) {
    const f = line.split(':');
    if (f.length >= 7 && f[0] === user && /^\d+$/.test(f[2] ?? '') && /^\d+$/.test(f[3] ?? '')) return { uid: Number(f[2]), gid: Number(f[3]) };
  }
  return undefined;
}

/**
 * The uid/gid of `vmm_user` (a local user of /etc/passwd, or `uid:gid`). Users only known to other
 * NSS sources (LDAP, systemd-homed) are not looked up: a VMM user is a local system user.
 */
export function lookupUser(user: string, passwdFile = '/etc/passwd'): UserIds | undefined {
  let text = '';
  try {
    text = readFileSync(passwdFile, 'utf8');
  } catch {
    /* numeric form still works */
  }
  return lookupUserIn(text, user);
}
