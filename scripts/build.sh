#!/usr/bin/env bash
# build.sh DIR [cmake args...]: configure (once) and build one tree with every core.
set -euo pipefail
dir=$1; shift
root=$(cd "$(dirname "$0")/.." && pwd)
launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
if [ ! -f "$dir/CMakeCache.txt" ]; then
  cmake -S "$root" -B "$dir" "${launcher[@]}" "$@" >/dev/null
fi
cmake --build "$dir" -j"$(nproc)"
