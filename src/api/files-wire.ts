/**
 * What the files API's two sides share without zod (the client and the CLI keep zod off their
 * start-up path): guest path rules (the API, `vm cp` and `[[file_sync]]` apply them) and the
 * trailer that ends a raw download.
 */

/** Longest guest path accepted (Linux's PATH_MAX, terminator included). */
export const GUEST_PATH_MAX = 4095;

/**
 * Why `path` is not an acceptable guest path, or undefined when it is: absolute, no NUL or other
 * control character, at most GUEST_PATH_MAX bytes. `..` components are allowed (the guest's own
 * kernel resolves them inside the guest, which is the guest's business); callers that need a
 * path under a root (file_sync's /root) use guestPathUnder.
 */
export function guestPathProblem(path: string): string | undefined {
  if (path.length === 0) return 'is empty';
  if (!path.startsWith('/')) return 'is not absolute (guest paths start with "/")';
  if (path.includes('\0')) return 'contains a NUL byte';
  if (/[\u0001-\u001f\u007f]/.test(path)) return 'contains a control character';
  if (Buffer.byteLength(path) > GUEST_PATH_MAX) return `is longer than ${GUEST_PATH_MAX} bytes`;
  return undefined;
}

/** `path` with repeated and trailing slashes and `.` components removed (never resolves `..`). */
export function tidyGuestPath(path: string): string {
  const parts = path.split('/').filter((p) => p !== '' && p !== '.');
  return `/${parts.join('/')}`;
}

/**
 * Why `path` is not a guest path strictly below `root` (e.g. "/root"), or undefined: the checks
 * of guestPathProblem plus no `..` component at all, so the lexical check is the real one.
 */
export function guestPathUnderProblem(path: string, root: string): string | undefined {
  const p = guestPathProblem(path);
  if (p) return p;
  if (path.split('/').includes('..')) return 'contains a ".." component';
  const tidy = tidyGuestPath(path);
  if (!tidy.startsWith(`${root}/`)) return `is not under ${root}/`;
  return undefined;
}

/** Splits a tidy guest path into its directory and last component ("/" has none: ["/", ""]). */
export function splitGuestPath(path: string): { dir: string; name: string } {
  const tidy = tidyGuestPath(path);
  const at = tidy.lastIndexOf('/');
  return { dir: at <= 0 ? '/' : tidy.slice(0, at), name: tidy.slice(at + 1) };
}

/**
 * The trailer that ends a raw download (GET /files, GET /archive): the body's status is only
 * known once the guest has sent its last byte, after the 200 and the headers. A body without
 * this trailer was cut short.
 */
export const RESULT_TRAILER = 'x-banger-result';
export type RawResult = { ok: true; size?: number; mode?: number } | { ok: false; error: { code: string; message: string; fix?: string } };

/** Longest error message / fix a trailer carries (code units): the client's header limit is 16 KiB, escapes take 6 bytes. */
const TRAILER_MAX_MESSAGE = 1500;
const TRAILER_MAX_FIX = 500;

const clip = (s: string, max: number) => (s.length > max ? `${s.slice(0, max)}…` : s);

/**
 * The RESULT_TRAILER value for `result`: JSON with every character outside printable ASCII as a
 * `\uXXXX` escape, because a header value may hold neither control bytes nor characters above
 * U+00FF (Node's addTrailers throws, and the client would see a body cut short instead of the
 * guest's error); error texts are clipped so the trailer stays under the client's header limit.
 * JSON.parse gives the same strings back.
 */
export function encodeRawResult(result: RawResult): string {
  const bounded: RawResult = result.ok
    ? result
    : {
        ok: false,
        error: {
          code: clip(result.error.code, 64),
          message: clip(result.error.message, TRAILER_MAX_MESSAGE),
          ...(result.error.fix !== undefined ? { fix: clip(result.error.fix, TRAILER_MAX_FIX) } : {}),
        },
      };
  return JSON.stringify(bounded).replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}
