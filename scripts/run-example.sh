#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and runs the main job on
# the bundled example: examples/count_calls, a multi-threaded program that attaches an
# entry and a return probe to its own hottest function while its workers run, prints
# calls by argument and a latency histogram in bpftrace's format, and what the probes
# cost. Then the synchronization benchmark's side-by-side table (--quick).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "$root/build/release" -DCMAKE_BUILD_TYPE=RelWithDebInfo
echo "=== examples/count_calls: probing a running hot path"
"$root/build/release/examples/count_calls" "$@"
echo
echo "=== bench/sync_bench --quick: the read-side schemes side by side with liburcu"
"$root/build/release/bench/sync_bench" --quick
