#!/bin/sh
# The ferry command: Ferry's bundled CLI on its own Node.js runtime (whatever node the host has).
# A daemon runs the ES module bundle; a command the CommonJS one with V8's code cache (launch.cjs).
case "$1" in
  agent | fence | console) exec /usr/lib/ferry/node /usr/lib/ferry/cli.mjs "$@" ;;
esac
exec /usr/lib/ferry/node /usr/lib/ferry/launch.cjs "$@"
