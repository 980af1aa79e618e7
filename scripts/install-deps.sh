#!/usr/bin/env bash
# Installs, with apt-get and only when missing, every Debian package that hotprobe's build,
# tests and benchmarks need. Safe to run again; does nothing when all are present.
set -euo pipefail

packages=(
  cmake make g++ pkg-config            # the build
  clang clang-format clang-tidy        # -Wthread-safety build, format and lint checks
  libgtest-dev libgmock-dev            # tests
  libbenchmark-dev liburcu-dev         # benchmarks (liburcu: the side-by-side baseline)
  libzydis-dev libzycore-dev           # x86-64 decoding and encoding (src/arch/x86_64)
  libelf-dev                           # ELF symbols (src/elf)
  libcli11-dev libfmt-dev              # the hotprobe command
  bpftrace                             # conformance tests and the run benchmark (the reference)
  libdw-dev systemtap-sdt-dev          # unwinding the target's real frames (attach); USDT notes
  golang-go                            # Go programs under probes (entry and return on goroutines)
  busybox-static                       # a static binary: refused before it starts
  redis-server redis-tools nginx-light # real services on loopback, counts checked end to end
  python3 perl sqlite3 gzip            # real Debian programs, counts compared with bpftrace
  ccache                               # rebuilds of the three trees share objects
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: run as root (or: sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
