#!/bin/sh
# The ferry command: Ferry's bundled CLI on its own Node.js runtime (whatever node the host has).
# A daemon runs the ES module bundle; a command the CommonJS one with V8's code cache (launch.cjs).
# Every connection Ferry makes trusts only its domain's CA: a command does not load Node's public
# roots (docs/performance.md, "Node's certificate stores"); a daemon starts once.
unset NODE_EXTRA_CA_CERTS
case "$1" in
  agent | fence | console) exec /usr/lib/ferry/node /usr/lib/ferry/cli.mjs "$@" ;;
esac
exec /usr/lib/ferry/node --use-openssl-ca /usr/lib/ferry/launch.cjs "$@"
