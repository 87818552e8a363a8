import { test } from 'node:test';
import assert from 'node:assert/strict';
import { addressInNetworks, inCidr, ipv4ToNumber } from '../../src/util/cidr.js';

test('ipv4ToNumber reads dotted quads and nothing else', () => {
  assert.equal(ipv4ToNumber('0.0.0.0'), 0);
  assert.equal(ipv4ToNumber('10.241.3.10'), ((10 * 256 + 241) * 256 + 3) * 256 + 10);
  assert.equal(ipv4ToNumber('255.255.255.255'), 2 ** 32 - 1);
  for (const bad of ['', '1.2.3', '1.2.3.4.5', '256.1.1.1', '1.2.3.x', '::1', '1.2.3.-4'])
    assert.equal(ipv4ToNumber(bad), null, bad);
});

test('inCidr compares the network part only', () => {
  assert.equal(inCidr('10.242.5.11', '10.242.5.0/24'), true);
  assert.equal(inCidr('10.242.6.11', '10.242.5.0/24'), false);
  assert.equal(inCidr('10.242.5.11', '10.242.5.11/32'), true);
  assert.equal(inCidr('10.242.5.12', '10.242.5.11/32'), false);
  assert.equal(inCidr('192.168.1.1', '0.0.0.0/0'), true);
  // High addresses: no sign trouble with the top bit set.
  assert.equal(inCidr('200.1.2.3', '200.0.0.0/8'), true);
  assert.equal(inCidr('201.1.2.3', '200.0.0.0/8'), false);
  assert.equal(inCidr('172.16.9.1', '172.16.0.0/12'), true);
  assert.equal(inCidr('172.32.0.1', '172.16.0.0/12'), false);
});

test('inCidr is false for what is not IPv4 or not a CIDR', () => {
  assert.equal(inCidr('::1', '10.0.0.0/8'), false);
  assert.equal(inCidr('10.0.0.1', '10.0.0.0'), false);
  assert.equal(inCidr('10.0.0.1', '10.0.0.0/33'), false);
  assert.equal(inCidr('10.0.0.1', 'x/8'), false);
});

test('addressInNetworks picks an own address inside the networks, facing the peer first', () => {
  const own = ['127.0.0.1', '10.241.1.10', '10.242.1.10', '10.243.1.10'];
  assert.equal(addressInNetworks(own, []), null);
  assert.equal(addressInNetworks(own, ['192.168.0.0/16']), null);
  assert.equal(addressInNetworks(own, ['10.242.1.0/24']), '10.242.1.10');
  const nets = ['10.242.1.0/24', '10.243.1.0/24'];
  assert.equal(addressInNetworks(own, nets), '10.242.1.10');
  assert.equal(addressInNetworks(own, nets, '10.243.1.11'), '10.243.1.10');
  // A peer in none of the networks (or a host name) changes nothing.
  assert.equal(addressInNetworks(own, nets, '10.9.9.9'), '10.242.1.10');
  assert.equal(addressInNetworks(own, nets, 'host-b'), '10.242.1.10');
});
