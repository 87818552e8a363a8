#!/bin/sh
# The ferry command: Ferry's bundled CLI on its own Node.js runtime (whatever node the host has).
exec /usr/lib/ferry/node /usr/lib/ferry/cli.mjs "$@"
