// Finding the listening socket in /proc/PID/net/tcp{,6} (qemu/tcp-nodelay.ts): pure parsing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { listenerInode } from '../../src/qemu/tcp-nodelay.js';

const HEAD = '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode';
/** One row of the kernel's table: the columns the parser reads, the rest as the kernel fills them. */
const row = (local: string, rem: string, st: string, inode: string): string =>
  `   0: ${local} ${rem} ${st} 00000000:00000000 00:00000000 00000000     0        0 ${inode} 1 0 100 0 0 10 0`;
const V4 = [
  HEAD,
  row('0100007F:2A31', '00000000:0000', '0A', '111'),
  row('0100007F:2A31', '0100007F:D3C2', '01', '222'),
  row('0100007F:0050', '00000000:0000', '0A', '333'),
].join('\n');
const V6 = [HEAD, row(`${'0'.repeat(24)}01000000:1F90`, `${'0'.repeat(32)}:0000`, '0A', '444')].join('\n');

test('the listening socket of a port, IPv4 or IPv6; not an established one, not another port', () => {
  assert.equal(listenerInode([V4, V6], 0x2a31), '111');
  assert.equal(listenerInode([V4, V6], 80), '333');
  assert.equal(listenerInode([V4, V6], 8080), '444');
  assert.equal(listenerInode([V4, V6], 0xd3c2), null, 'a connection from that port is not a listener');
  assert.equal(listenerInode([V4, V6], 0x31), null, 'the port is matched whole, not by its end');
  assert.equal(listenerInode(['', 'garbage'], 80), null);
});
