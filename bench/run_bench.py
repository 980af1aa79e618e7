#!/usr/bin/env python3
"""hotprobe run against bpftrace on the demo service, side by side in one run.

The same script (calls counted by argument, plus a latency histogram from an
entry/return pair on the hottest function) runs on examples/demo_service untraced,
under `hotprobe run` and under `bpftrace -c`. Each run's time is the one the demo
reports for its worker phase (so neither tracer's start-up or exit is counted); the
added time per probe hit is (traced - untraced) / hits, where hits = 2 per request
(entry and return of handle_request). Several rounds are interleaved; minimum and
median are reported.

  bench/run_bench.py [--build DIR] [--rounds N] [--requests N] [--bpftrace-requests N]
                     [--json FILE]
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys

SCRIPT = """uprobe:{bin}:handle_request {{ @calls[arg0] = count(); @start[tid] = nsecs; }}
uretprobe:{bin}:handle_request /@start[tid]/ {{
  @latency_ns = hist(nsecs - @start[tid]); delete(@start[tid]);
}}"""


def run_demo(cmd, requests, threads):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    m = re.search(r"demo_service: (\d+) threads x (\d+) requests in ([0-9.]+) s", out.stdout)
    if out.returncode != 0 or not m:
        sys.exit(f"run_bench: '{' '.join(cmd[:3])} ...' failed ({out.returncode}):\n"
                 f"{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    assert int(m.group(2)) == requests and int(m.group(1)) == threads
    return float(m.group(3)), out.stdout + out.stderr


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.path.join(root, "build", "release"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--requests", type=int, default=1000000, help="per thread, untraced and hotprobe")
    ap.add_argument("--bpftrace-requests", type=int, default=100000, help="per thread, bpftrace")
    ap.add_argument("--json", help="write the results here too")
    a = ap.parse_args()

    demo = os.path.join(a.build, "examples", "demo_service")
    hotprobe = os.path.join(a.build, "bin", "hotprobe")
    for f in (demo, hotprobe):
        if not os.access(f, os.X_OK):
            sys.exit(f"run_bench: {f} is missing: build first (scripts/build.sh {a.build})")
    script = SCRIPT.format(bin=demo)
    bpftrace = shutil.which("bpftrace")
    have_bpftrace = bpftrace is not None and os.geteuid() == 0
    if not have_bpftrace:
        print("run_bench: bpftrace is not installed or this is not root: bpftrace column skipped")

    def demo_cmd(n):
        return [demo, "--threads", str(a.threads), "--requests", str(n)]

    times = {"untraced": [], "hotprobe": [], "bpftrace": [], "untraced_small": []}
    for r in range(a.rounds):
        times["untraced"].append(run_demo(demo_cmd(a.requests), a.requests, a.threads)[0])
        times["untraced_small"].append(
            run_demo(demo_cmd(a.bpftrace_requests), a.bpftrace_requests, a.threads)[0])
        times["hotprobe"].append(run_demo([hotprobe, "run", "-e", script, "--"] + demo_cmd(a.requests),
                                          a.requests, a.threads)[0])
        if have_bpftrace:
            cmd = [bpftrace, "-e", script, "-c", " ".join(demo_cmd(a.bpftrace_requests))]
            times["bpftrace"].append(run_demo(cmd, a.bpftrace_requests, a.threads)[0])
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(
            f"{k} {v[-1]:.3f} s" for k, v in times.items() if v), flush=True)

    def per_hit(traced, base, n):
        hits = 2 * n * a.threads
        return [(t - b) / hits * 1e9 for t, b in zip(traced, base)]

    rows = {
        "hotprobe": per_hit(times["hotprobe"], times["untraced"], a.requests),
    }
    if times["bpftrace"]:
        rows["bpftrace"] = per_hit(times["bpftrace"], times["untraced_small"], a.bpftrace_requests)
    print()
    print(f"demo_service, {a.threads} threads; script: count by arg0 + latency hist "
          f"(entry/return pair on handle_request); 2 hits per request")
    print(f"{'':10} {'requests':>10} {'run time min/med (s)':>22} {'added ns/hit min/med':>22}")
    print(f"{'untraced':10} {a.requests * a.threads:>10} "
          f"{min(times['untraced']):>10.3f} {statistics.median(times['untraced']):>10.3f}")
    for name, vals in rows.items():
        n = a.requests if name == "hotprobe" else a.bpftrace_requests
        t = times[name]
        print(f"{name:10} {n * a.threads:>10} {min(t):>10.3f} {statistics.median(t):>10.3f} "
              f"{min(vals):>10.1f} {statistics.median(vals):>10.1f}")
    result = {"rounds": a.rounds, "threads": a.threads, "times": times, "added_ns_per_hit": rows}
    if "bpftrace" in rows:
        ratio = statistics.median(rows["bpftrace"]) / max(statistics.median(rows["hotprobe"]), 1e-9)
        result["bpftrace_over_hotprobe"] = ratio
        print(f"bpftrace / hotprobe added time per hit (medians): {ratio:.0f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
