/** The data channels' frame codec: shared with the client (attach), so it lives in util. */
export * from '../util/frames.js';
