#!/usr/bin/env bash
# The README's first command: installs what is missing, builds, and runs the main job on
# the bundled example. Until the probe engine lands, the main job is the synchronization
# benchmark (bench/sync_bench) printing its side-by-side table (--quick: about a minute).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh" "$root/build/release" -DCMAKE_BUILD_TYPE=RelWithDebInfo
exec "$root/build/release/bench/sync_bench" --quick "$@"
