import assert from 'node:assert/strict';
import { test } from 'node:test';
import { encodeData, encodeFrame, FrameDecoder, FrameError, MAX_FRAME_PAYLOAD } from '../../src/guest/agent-frames.js';

test('frames round-trip when fed one byte at a time', () => {
  const wire = Buffer.concat([encodeFrame('A', '{"nonce":"n1"}'), encodeFrame('D', Buffer.from([0, 1, 2]), 2), encodeFrame('R', '{}')]);
  const d = new FrameDecoder();
  const got = [];
  for (const byte of wire) got.push(...d.push(Buffer.from([byte])));
  assert.deepEqual(
    got.map((f) => [f.type, f.stream, f.payload.toString('hex')]),
    [
      ['A', 0, Buffer.from('{"nonce":"n1"}').toString('hex')],
      ['D', 2, '000102'],
      ['R', 0, Buffer.from('{}').toString('hex')],
    ],
  );
  assert.equal(d.bufferedBytes, 0);
});

test('garbage before a frame (an abandoned session) is skipped and counted', () => {
  const d = new FrameDecoder();
  const junk = Buffer.from([0xba, 0x00, 0x41, 0xba, 0x6e, 0x7a, 0, 9, 9, 9, 9]);
  const frames = d.push(Buffer.concat([junk, encodeFrame('A', 'x')]));
  assert.deepEqual(
    frames.map((f) => f.type),
    ['A'],
  );
  assert.equal(d.skippedBytes, junk.length);
});

test('a length over the limit is refused before it is buffered', () => {
  const header = encodeFrame('D', Buffer.alloc(0));
  header.writeUInt32LE(MAX_FRAME_PAYLOAD + 1, 4);
  assert.throws(() => new FrameDecoder().push(header), FrameError);
  assert.throws(() => encodeFrame('D', Buffer.alloc(MAX_FRAME_PAYLOAD + 1)), FrameError);
});

test('encodeData splits into frames no larger than the limit', () => {
  const data = Buffer.alloc(MAX_FRAME_PAYLOAD * 2 + 5, 7);
  const d = new FrameDecoder();
  const frames = encodeData(data, 1).flatMap((b) => d.push(b));
  assert.deepEqual(
    frames.map((f) => f.payload.length),
    [MAX_FRAME_PAYLOAD, MAX_FRAME_PAYLOAD, 5],
  );
  assert.ok(frames.every((f) => f.type === 'D' && f.stream === 1));
});

test('a megabyte of magic-like garbage is skipped without exhausting the stack, then a frame decodes', () => {
  const d = new FrameDecoder();
  const garbage = Buffer.alloc(1024 * 1024, 0xba);
  const frames = d.push(Buffer.concat([garbage, encodeFrame('R', '{"ok":true}')]));
  assert.deepEqual(
    frames.map((f) => [f.type, f.payload.toString()]),
    [['R', '{"ok":true}']],
  );
  assert.equal(d.skippedBytes, garbage.length);
});

test('a maximal frame fed a byte at a time decodes once, whole', () => {
  const payload = Buffer.alloc(MAX_FRAME_PAYLOAD, 0x5a);
  const wire = encodeFrame('D', payload, 1);
  const d = new FrameDecoder();
  const got = [];
  for (let i = 0; i < wire.length; i++) got.push(...d.push(wire.subarray(i, i + 1)));
  assert.equal(got.length, 1);
  assert.ok(got[0]?.payload.equals(payload));
  assert.equal(d.bufferedBytes, 0);
});
