/**
 * The host's global git identity (user.name, user.email) merged into a guest's git config text.
 * Pure: the file-sync step reads the guest file and writes the result back.
 */

export interface GitIdentity {
  name?: string;
  email?: string;
}

/** A value as git config reads it back: always quoted, `\` and `"` escaped (newlines are refused before). */
const quote = (v: string) => `"${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;

const USER_HEADER = /^\s*\[\s*user\s*\]/i;
const ANY_HEADER = /^\s*\[/;

/** Why a value cannot go into a git config file, or undefined. */
export function identityValueProblem(v: string): string | undefined {
  if (/[\u0000-\u0008\u000a-\u001f\u007f]/.test(v)) return 'contains a newline or control character';
  if (v.length > 1024) return 'is longer than 1024 characters';
  return undefined;
}

/**
 * Sets user.name / user.email in git config text, keeping every other line. git takes the last
 * occurrence of a single-valued key, so the keys being set are removed from every plain `[user]`
 * section (with their continuation lines) and written right after the last `[user]` header, or
 * in a new `[user]` section at the end. Answers the text unchanged when nothing is to be set.
 */
export function mergeGitIdentity(text: string, id: GitIdentity): string {
  const set = (['name', 'email'] as const).filter((k) => id[k] !== undefined);
  if (set.length === 0) return text;
  const keyLine = new RegExp(`^\\s*(${set.join('|')})\\s*(=|$|[#;])`, 'i');
  const lines = text.length ? text.replace(/\n$/, '').split('\n') : [];
  const out: string[] = [];
  let inUser = false;
  let skippingContinuation = false;
  let lastUserHeader = -1;
  for (const line of lines) {
    if (skippingContinuation) {
      skippingContinuation = line.endsWith('\\');
      continue;
    }
    if (ANY_HEADER.test(line)) {
      inUser = USER_HEADER.test(line);
      if (inUser) lastUserHeader = out.length;
      out.push(line);
      continue;
    }
    if (inUser && keyLine.test(line)) {
      skippingContinuation = line.endsWith('\\');
      continue;
    }
    out.push(line);
  }
  const ours = set.map((k) => `\t${k} = ${quote(id[k] as string)}`);
  if (lastUserHeader >= 0) out.splice(lastUserHeader + 1, 0, ...ours);
  else {
    if (out.length && out[out.length - 1]?.trim() !== '') out.push('');
    out.push('[user]', ...ours);
  }
  return `${out.join('\n')}\n`;
}
