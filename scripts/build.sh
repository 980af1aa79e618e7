#!/usr/bin/env bash
# build.sh DIR [cmake args...]: configure (once) and build one tree with every core.
set -euo pipefail
dir=$1; shift
root=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -f "$dir/CMakeCache.txt" ]; then
  cmake -S "$root" -B "$dir" "$@" >/dev/null
fi
cmake --build "$dir" -j"$(nproc)"
