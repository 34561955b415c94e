// No static import of node:crypto: the CLI loads this module (DNS_LABEL, op ids) on every start-up,
// and loading node:crypto costs ~9 ms there on Node 20 and ~25 ms on Node 24 (docs/performance.md).

/**
 * Short operation ids shown to users, e.g. op-3f9a1c. A request/log correlation id, never a
 * secret (a client may send its own), so Math.random's 24 bits do what randomBytes(3) did.
 */
export const newOpId = () =>
  `op-${Math.floor(Math.random() * 0x1000000)
    .toString(16)
    .padStart(6, '0')}`;
/** 32 hex chars; users refer to resources by unique prefix. */
export const newId = () => process.getBuiltinModule('node:crypto').randomBytes(16).toString('hex');

/** RFC 1123 label, lowercase only: VM names become `<name>.vm` DNS names. */
export const DNS_LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

export function dnsLabelProblem(name: string): string | undefined {
  if (name.length === 0) return 'is empty';
  if (name.length > 63) return 'is longer than 63 characters';
  if (/[A-Z]/.test(name)) return 'contains uppercase letters';
  if (!DNS_LABEL.test(name)) return 'may contain only a-z, 0-9 and "-", and must start and end with a letter or digit';
  return undefined;
}
