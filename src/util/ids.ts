import { randomBytes } from 'node:crypto';

/** Short operation ids shown to users, e.g. op-3f9a1c. */
export const newOpId = () => `op-${randomBytes(3).toString('hex')}`;
/** 32 hex chars; users refer to resources by unique prefix. */
export const newId = () => randomBytes(16).toString('hex');

/** RFC 1123 label, lowercase only: VM names become `<name>.vm` DNS names. */
export const DNS_LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

export function dnsLabelProblem(name: string): string | undefined {
  if (name.length === 0) return 'is empty';
  if (name.length > 63) return 'is longer than 63 characters';
  if (/[A-Z]/.test(name)) return 'contains uppercase letters';
  if (!DNS_LABEL.test(name)) return 'may contain only a-z, 0-9 and "-", and must start and end with a letter or digit';
  return undefined;
}
