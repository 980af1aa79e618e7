#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and runs the main job on
# the bundled example: `hotprobe run` traces examples/demo_service (a multi-threaded
# service-like program, unmodified) with examples/demo/latency.bt, which counts calls of
# its hottest function by route and draws a latency histogram from an entry/return pair,
# in bpftrace's output format. Then the library example (a program probing itself).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "$root/build/release" -DCMAKE_BUILD_TYPE=RelWithDebInfo
cd "$root"
echo "=== hotprobe run examples/demo/latency.bt -- build/release/examples/demo_service"
build/release/bin/hotprobe run examples/demo/latency.bt -- build/release/examples/demo_service "$@"
echo
echo "=== examples/count_calls: a program that probes its own hot path with the library"
build/release/examples/count_calls --seconds 1
