#!/bin/sh
# run_tests: the project's unittest suite, in the agent's workspace. Exits non-zero (a tool
# error the model sees, with the output) when a test fails.
cd "$KEEL_WORKSPACE" || exit 2
if command -v unshare >/dev/null 2>&1 && unshare -rn true 2>/dev/null; then
  exec unshare -rn python3 -m unittest discover -q 2>&1
fi
exec python3 -m unittest discover -q 2>&1
