#!/usr/bin/env bash
# The README's test command: installs what is missing, then builds and runs every test:
# the style check, the clang -Wthread-safety build of the library layers, the normal build,
# an AddressSanitizer+UndefinedBehaviorSanitizer build and a ThreadSanitizer build. Each
# stage prints its time; the whole run stays well under 30 minutes on 2 cores.
# The layers stage checks that each layer sees only the headers below it.
# HOTPROBE_TEST_STAGES="format thread-safety release layers asan tsan" picks stages.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
"$root/scripts/install-deps.sh"

stages=${HOTPROBE_TEST_STAGES:-"format thread-safety release layers asan tsan"}
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

# The layering (docs/design.md, "Layers") as the build enforces it: with the compile flags
# of a file of each layer (build/release/compile_commands.json), the headers of the layers
# it may use are found and those of the layers above it, or beside it, are not.
layer_check() {
  [ -f build/release/compile_commands.json ] ||
    "$root/scripts/build.sh" build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHOTPROBE_WERROR=ON
  python3 - build/release/compile_commands.json <<'EOF'
import json, os, shlex, subprocess, sys, tempfile
db = {os.path.realpath(e["file"]): e for e in json.load(open(sys.argv[1]))}
# file of the layer: (headers it may include, headers it must not reach)
rules = {
    "src/base/error.cc": (["base/assert.h"], ["sync/domain.h", "elf/maps.h", "core/site.h"]),
    "src/sync/baselines.cc": (["sync/domain.h", "base/assert.h"],
                              ["core/dispatch.h", "elf/maps.h", "arch/x86_64/decode.h", "script/ast.h"]),
    "src/elf/maps.cc": (["elf/maps.h", "base/assert.h"],
                        ["sync/domain.h", "arch/x86_64/decode.h", "core/site.h"]),
    "src/arch/x86_64/decode.cc": (["arch/x86_64/decode.h", "base/assert.h"],
                                  ["elf/maps.h", "sync/domain.h", "core/site.h"]),
    "src/inject/inject.cc": (["inject/inject.h", "elf/maps.h"], ["core/site.h", "sync/domain.h", "script/ast.h"]),
    "src/script/diag.cc": (["script/ast.h", "hotprobe/probe.h"], ["core/site.h", "sync/domain.h", "elf/maps.h"]),
}
bad = 0
for src, rule in rules.items():
    if rule is None:
        continue
    e = db.get(os.path.realpath(src))
    if not e:
        print(f"layers: {src} is not in compile_commands.json: rebuild build/release"); bad += 1; continue
    args = e["arguments"] if "arguments" in e else shlex.split(e["command"])
    if os.path.basename(args[0]) == "ccache":
        args = args[1:]
    flags, skip = [], False
    for a in args[1:]:
        if skip: skip = False; continue
        if a in ("-o", "-c", "-MF", "-MT", "-MQ"): skip = True; continue
        if a == e["file"] or a.endswith(os.path.basename(src)) or a in ("-MD", "-MMD"): continue
        flags.append(a)
    for header, want in [(h, True) for h in rule[0]] + [(h, False) for h in rule[1]]:
        with tempfile.NamedTemporaryFile("w", suffix=".cc") as t:
            t.write(f'#include "{header}"\n'); t.flush()
            r = subprocess.run([args[0], *flags, "-fsyntax-only", t.name], cwd=e["directory"],
                               capture_output=True, text=True)
        found = f"{header}: No such file" not in r.stderr  # not a header it includes
        if found != want:
            bad += 1
            print(f"layers: {src} {'cannot include' if want else 'can include'} {header}" +
                  ("" if want else ": a layer reaches up or across the layering"))
print(f"layers: {'ok' if not bad else str(bad) + ' wrong'}")
sys.exit(1 if bad else 0)
EOF
}

build_and_test() {
  local dir=$1; shift
  "$root/scripts/build.sh" "$dir" "$@" &&
    ctest --test-dir "$dir" --output-on-failure -j"$jobs" --timeout 600
}

for s in $stages; do
  case $s in
    format) stage format format_check ;;
    layers) stage layers layer_check ;;
    thread-safety) stage thread-safety thread_safety_build ;;
    release) stage release build_and_test build/release -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHOTPROBE_WERROR=ON ;;
    asan) stage asan+ubsan build_and_test build/asan -DCMAKE_BUILD_TYPE=Debug -DHOTPROBE_SANITIZE=address,undefined \
            -DHOTPROBE_BUILD_BENCH=OFF -DHOTPROBE_BUILD_EXAMPLES=OFF ;;
    # Handlers of int3-mode probes run inside the SIGTRAP handler by design (like the
    # kernel running uprobe handlers in trap context): not a report.
    tsan) TSAN_OPTIONS=${TSAN_OPTIONS:-report_signal_unsafe=0} stage tsan build_and_test build/tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DHOTPROBE_SANITIZE=thread \
            -DHOTPROBE_BUILD_BENCH=OFF -DHOTPROBE_BUILD_EXAMPLES=OFF ;;
    *) echo "unknown stage '$s' (stages: format thread-safety release layers asan tsan)" >&2; exit 2 ;;
  esac
done

if [ ${#failed[@]} -ne 0 ]; then
  echo "FAILED stages: ${failed[*]}"
  exit 1
fi
echo "all stages passed: $stages"
