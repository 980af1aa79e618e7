#!/usr/bin/env bash
# clang-tidy with the repository's .clang-tidy over the library and the command (src/),
# with the flags of the release build (build/release/compile_commands.json; built first
# if missing). Arguments: files or directories to check (default: src/). Prints each
# finding and a count per check; exit 1 if there is any. Takes about 15 minutes for all
# of src/ on 2 cores, so it is not a stage of scripts/test.sh: run it on what you change
# (scripts/tidy.sh $(git diff --name-only main -- 'src/*.cc')).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ -f build/release/compile_commands.json ] ||
  "$root/scripts/build.sh" build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHOTPROBE_WERROR=ON
[ $# -gt 0 ] || set -- src/
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# GCC's warning flags in the compile commands are unknown to clang: not findings.
run-clang-tidy -quiet -j "$(nproc)" -extra-arg=-Wno-unknown-warning-option -p build/release "$@" \
  >"$log" 2>&1 || true
findings=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '^/.*: (warning|error): ' | sort -u || true)
if [ -z "$findings" ]; then
  echo "tidy: no findings"
  exit 0
fi
echo "$findings"
echo "tidy: $(echo "$findings" | wc -l) findings by check:"
echo "$findings" | sed -E 's/.*\[([a-z0-9,.-]+)\]$/\1/' | sort | uniq -c | sort -rn
exit 1
