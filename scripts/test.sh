#!/usr/bin/env bash
# The README's test command: installs what is missing, then builds and runs every test:
# the style check, the clang -Wthread-safety build of the library layers, the normal build,
# an AddressSanitizer+UndefinedBehaviorSanitizer build and a ThreadSanitizer build. Each
# stage prints its time; the whole run stays well under 30 minutes on 2 cores.
# HOTPROBE_TEST_STAGES="format thread-safety release asan tsan" picks stages.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/scripts/install-deps.sh"

stages=${HOTPROBE_TEST_STAGES:-"format thread-safety release asan tsan"}
export HOTPROBE_STRESS_SECONDS=${HOTPROBE_STRESS_SECONDS:-3}
jobs=$(nproc)
failed=()

stage() {
  local name=$1; shift
  local t0=$SECONDS
  echo "=== $name"
  if "$@"; then
    echo "=== $name: ok ($((SECONDS - t0)) s)"
  else
    echo "=== $name: FAILED ($((SECONDS - t0)) s)"
    failed+=("$name")
  fi
}

# clang-format over every C++ file of src/, include/, tests/ and bench/.
format_check() {
  local files
  files=$(git ls-files 'src/*.h' 'src/*.cc' 'include/*.h' 'tests/*.h' 'tests/*.cc' 'bench/*.h' 'bench/*.cc' 2>/dev/null ||
    find src include tests bench -name '*.h' -o -name '*.cc')
  # shellcheck disable=SC2086
  clang-format --dry-run --Werror $files
}

# clang's -Wthread-safety over the library layers (src/; no tests, benchmarks or
# examples), every warning an error: the lock annotations of src/base/thread_annotations.h
# (GUARDED_BY, REQUIRES, ACQUIRED_AFTER, ...) are checked, not only written.
thread_safety_build() {
  CC=clang CXX=clang++ "$root/scripts/build.sh" build/thread-safety -DCMAKE_BUILD_TYPE=Debug \
    -DHOTPROBE_BUILD_TESTS=OFF -DHOTPROBE_BUILD_BENCH=OFF -DHOTPROBE_BUILD_EXAMPLES=OFF \
    "-DCMAKE_CXX_FLAGS=-Wthread-safety -Werror=thread-safety"
}

build_and_test() {
  local dir=$1; shift
  "$root/scripts/build.sh" "$dir" "$@" &&
    ctest --test-dir "$dir" --output-on-failure -j"$jobs" --timeout 600
}

for s in $stages; do
  case $s in
    format) stage format format_check ;;
    thread-safety) stage thread-safety thread_safety_build ;;
    release) stage release build_and_test build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHOTPROBE_WERROR=ON ;;
    asan) stage asan+ubsan build_and_test build/asan -DCMAKE_BUILD_TYPE=Debug -DHOTPROBE_SANITIZE=address,undefined \
            -DHOTPROBE_BUILD_BENCH=OFF -DHOTPROBE_BUILD_EXAMPLES=OFF ;;
    # Handlers of int3-mode probes run inside the SIGTRAP handler by design (like the
    # kernel running uprobe handlers in trap context): not a report.
    tsan) TSAN_OPTIONS=${TSAN_OPTIONS:-report_signal_unsafe=0} stage tsan build_and_test build/tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHOTPROBE_SANITIZE=thread \
            -DHOTPROBE_BUILD_BENCH=OFF -DHOTPROBE_BUILD_EXAMPLES=OFF ;;
    *) echo "unknown stage '$s' (stages: format thread-safety release asan tsan)" >&2; exit 2 ;;
  esac
done

if [ ${#failed[@]} -ne 0 ]; then
  echo "FAILED stages: ${failed[*]}"
  exit 1
fi
echo "all stages passed: $stages"
