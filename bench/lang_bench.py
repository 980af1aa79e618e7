#!/usr/bin/env python3
"""hotprobe run against bpftrace on the script language's costly constructs, per hit.

One fixture (bench/lang_fixture.c, built as build/release/bench/lang_fixture) runs a
loop of N iterations and prints the loop's own wall time, so neither tracer's start-up
or exit is counted. Each row is one script, run under `hotprobe run -e SCRIPT -- FIXTURE`
and under `bpftrace -e SCRIPT -c FIXTURE` (kernel uprobes), with probes on the fixture
binary only:

  count         uprobe on lang_leaf (10 frames below lang_loop_call), @ = count()
  ustack        the same function, @[ustack] = count()
  ustack_cfi    the same with HOTPROBE_USTACK=cfi: hotprobe walks by the modules' CFI
                tables (bpftrace, which has no such mode, walks its frame pointers)
  usdt          a <sys/sdt.h> site (lang_fixture:tick), @ = count()
  usdt_arg0     the same site, @[arg0] = count()
  struct_cast   @[((struct foo *)arg0)->a] = count(), struct foo defined in the script
  args          @[args.p->a] = count() from the fixture's DWARF (bpftrace before 0.20
                is given args->p->a; hotprobe reads both)

The fixture reports the loop's thread CPU time (user + system: a kernel uprobe's work is
system time of the probed thread, a hotprobe handler's is user time) and its wall time;
--clock picks one (default cpu: the shared machine's other load does not count).
The added time per hit is (traced - untraced) / N, with the untraced time of the same
mode and N measured in the same round. Rounds are interleaved (every row of both
tracers, then the next round); min and median are reported, and bpftrace's median over
hotprobe's. Each traced run's map must add up to N hits, or the bench stops.

  bench/lang_bench.py [--build DIR] [--rounds R] [--n N] [--bpftrace-n N]
                      [--only ROW,...] [--clock cpu|wall] [--json FILE]
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys

# name -> (fixture mode, script[, hotprobe's environment]); {bin} is the fixture, {args}
# the args spelling.
ROWS = {
    "count": ("call", "uprobe:{bin}:lang_leaf {{ @ = count(); }}"),
    "ustack": ("call", "uprobe:{bin}:lang_leaf {{ @[ustack] = count(); }}"),
    "ustack_cfi": ("call", "uprobe:{bin}:lang_leaf {{ @[ustack] = count(); }}",
                   {"HOTPROBE_USTACK": "cfi"}),
    "usdt": ("usdt", "usdt:{bin}:lang_fixture:tick {{ @ = count(); }}"),
    "usdt_arg0": ("usdt", "usdt:{bin}:lang_fixture:tick {{ @[arg0] = count(); }}"),
    "struct_cast": ("call", "struct foo {{ int a; int b; }} "
                            "uprobe:{bin}:lang_leaf {{ @[((struct foo *)arg0)->a] = count(); }}"),
    "args": ("call", "uprobe:{bin}:lang_leaf {{ @[{args}->a] = count(); }}"),
}

FIXTURE_LINE = re.compile(r"lang_fixture: (\d+) (call|usdt) in ([0-9.]+) s, cpu ([0-9.]+) s")
# A map entry's count: "@...: 12" on one line, or "]: 12" closing a multi-line ustack key.
MAP_COUNT = re.compile(r"(?m)^(?:@[^\n]*|\]): (\d+)$")


def run(cmd, mode, n, expect_hits, clock, env=None):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                             env=dict(os.environ, **env) if env else None)
    except subprocess.TimeoutExpired:
        sys.exit(f"lang_bench: '{' '.join(cmd[:2])} ...' did not finish in 900 s")
    m = FIXTURE_LINE.search(out.stdout)
    if out.returncode != 0 or not m or int(m.group(1)) != n or m.group(2) != mode:
        sys.exit(f"lang_bench: '{' '.join(cmd)}' failed (exit {out.returncode}):\n"
                 f"{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    if expect_hits:
        hits = sum(int(c) for c in MAP_COUNT.findall(out.stdout))
        if hits != n:
            sys.exit(f"lang_bench: '{' '.join(cmd)}' counted {hits} hits, expected {n}: "
                     f"the probe did not fire once per iteration\n{out.stdout[-2000:]}\n"
                     f"{out.stderr[-2000:]}")
    return float(m.group(3 if clock == "wall" else 4))


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.path.join(root, "build", "release"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=1000000, help="iterations, untraced and hotprobe")
    ap.add_argument("--bpftrace-n", type=int, default=50000,
                    help="iterations under bpftrace (its hits cost microseconds)")
    ap.add_argument("--only", help="comma-separated rows (default: all): " + ",".join(ROWS))
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="the loop's thread CPU time (default; the machine's other load does "
                         "not count) or its wall time")
    ap.add_argument("--json", help="write the results here too")
    a = ap.parse_args()

    rows = list(ROWS)
    if a.only:
        rows = a.only.split(",")
        bad = [r for r in rows if r not in ROWS]
        if bad:
            sys.exit(f"lang_bench: unknown row(s) {', '.join(bad)}; rows are {', '.join(ROWS)}")
    if a.rounds < 1 or a.n < 1 or a.bpftrace_n < 1:
        sys.exit("lang_bench: --rounds, --n and --bpftrace-n must be at least 1")
    fixture = os.path.join(a.build, "bench", "lang_fixture")
    hotprobe = os.path.join(a.build, "bin", "hotprobe")
    for f in (fixture, hotprobe):
        if not os.access(f, os.X_OK):
            sys.exit(f"lang_bench: {f} is missing: build first (scripts/build.sh {a.build})")
    bpftrace = shutil.which("bpftrace")
    have_bpftrace = bpftrace is not None and os.geteuid() == 0
    if not have_bpftrace:
        print("lang_bench: bpftrace is not installed or this is not root: bpftrace column skipped")

    # bpftrace before 0.20 reads args as a pointer (args->p); from 0.20 on as a struct.
    bpftrace_args = "args->p"
    if have_bpftrace:
        out = subprocess.run([bpftrace, "--version"], capture_output=True, text=True).stdout
        v = re.search(r"v(\d+)\.(\d+)", out)
        if v and (int(v.group(1)), int(v.group(2))) >= (0, 20):
            bpftrace_args = "args.p"

    def script(row, tool):
        spelling = "args.p" if tool == "hotprobe" else bpftrace_args
        return ROWS[row][1].format(bin=fixture, args=spelling)

    tools = ["hotprobe"] + (["bpftrace"] if have_bpftrace else [])
    n_of = {"hotprobe": a.n, "bpftrace": a.bpftrace_n}
    modes = sorted({ROWS[r][0] for r in rows})
    base = {(m, n): [] for m in modes for n in set(n_of[t] for t in tools)}
    times = {(r, t): [] for r in rows for t in tools}
    added = {(r, t): [] for r in rows for t in tools}
    for rnd in range(a.rounds):
        for (mode, n) in base:
            base[(mode, n)].append(run([fixture, mode, str(n)], mode, n, False, a.clock))
        for r in rows:
            mode = ROWS[r][0]
            for t in tools:
                n = n_of[t]
                fx = [fixture, mode, str(n)]
                env = None
                if t == "hotprobe":
                    cmd = [hotprobe, "run", "-e", script(r, t), "--"] + fx
                    env = ROWS[r][2] if len(ROWS[r]) > 2 else None
                else:
                    cmd = [bpftrace, "-e", script(r, t), "-c", " ".join(fx)]
                sec = run(cmd, mode, n, True, a.clock, env)
                times[(r, t)].append(sec)
                added[(r, t)].append((sec - base[(mode, n)][-1]) / n * 1e9)
        print(f"round {rnd + 1}/{a.rounds} done", flush=True)

    print()
    print(f"lang_fixture, 1 thread; added ns per hit = (traced - untraced loop {a.clock} time) / N, "
          f"{a.rounds} rounds interleaved")
    for (mode, n), v in sorted(base.items()):
        print(f"untraced {mode} loop, N={n}: min {min(v) / n * 1e9:.1f} / "
              f"median {statistics.median(v) / n * 1e9:.1f} ns per iteration")
    hdr = f"{'row':12} {'tool':9} {'N':>8} {'added ns/hit min':>17} {'median':>9}"
    print(hdr + (f" {'bpftrace/hotprobe':>18}" if have_bpftrace else ""))
    result = {"clock": a.clock, "rounds": a.rounds, "n": n_of, "rows": {}, "untraced_s": {
        f"{m}/{n}": v for (m, n), v in base.items()}}
    for r in rows:
        entry = {"script": {t: script(r, t) for t in tools}}
        if len(ROWS[r]) > 2:
            entry["hotprobe_env"] = ROWS[r][2]
        for t in tools:
            v = added[(r, t)]
            line = f"{r:12} {t:9} {n_of[t]:>8} {min(v):>17.1f} {statistics.median(v):>9.1f}"
            entry[t] = {"seconds": times[(r, t)], "added_ns_per_hit": v}
            if t == "bpftrace":
                ratio = statistics.median(v) / max(statistics.median(added[(r, "hotprobe")]), 1e-9)
                entry["bpftrace_over_hotprobe"] = ratio
                line += f" {ratio:>17.1f}x"
            print(line)
        result["rows"][r] = entry
    print()
    for r in rows:
        env = "".join(f"{k}={v} " for k, v in (ROWS[r][2] if len(ROWS[r]) > 2 else {}).items())
        print(f"{r:12} {env}{script(r, 'hotprobe')}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
