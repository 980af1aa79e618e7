#!/usr/bin/env python3
"""hotprobe attach -p PID against bpftrace -p PID, on the same running process.

The target is a Python process that has loaded bench/probe_fixture's hp_probe_gen library
(50,000 functions hp_gen_f0..hp_gen_f49999) with ctypes and ticks in a loop: every
tick it measures the time since the previous one, so the longest gap while a tracer
attaches is the longest time the program was held (the injection's stop of its thread,
plus any patching stall). Both tracers get the same script, a glob matching N
functions, and a BEGIN that prints a marker, which both run after every probe is
attached:

  uprobe:LIB:hp_gen_f1???? { @ = count(); }  BEGIN { printf("attached\\n"); }

Columns (milliseconds; min and median over --rounds runs, interleaved):
  attach  command start to the marker (probes attached, BEGIN done)
  detach  SIGINT to the command's exit (every probe removed, maps printed: the prompt)
  stall   the target's longest tick gap during the whole attach+detach (hotprobe only)

bpftrace is measured at 1, 100 and 1,000 probes only by default: at 10,000 it takes
minutes to detach (--bpftrace-max raises the cap).

  bench/attach_bench.py [--build DIR] [--rounds N] [--bpftrace-max N] [--json FILE]
"""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

TARGET = r"""
import ctypes, sys, time
lib = ctypes.CDLL(sys.argv[1])
f = lib.hp_gen_f0
f.restype = ctypes.c_int
assert f(1) == 1001
print("ready", flush=True)
last = time.monotonic(); worst = 0.0
for line_start in iter(int, 1):
    time.sleep(0.0005)
    now = time.monotonic()
    worst = max(worst, now - last); last = now
    f(1)
    # SIGUSR1 (from the benchmark) makes it report and reset the worst gap.
    if getattr(sys, "report", False):
        sys.report = False
        print("worst %.3f" % (worst * 1e3), flush=True); worst = 0.0
"""

GLOBS = {1: "hp_gen_f0", 100: "hp_gen_f1??", 1000: "hp_gen_f1???", 10000: "hp_gen_f1????"}


def script(lib, n):
    return f'uprobe:{lib}:{GLOBS[n]} {{ @ = count(); }} BEGIN {{ printf("attached\\n"); }}'


def bpftrace_script(lib, n):
    """The same functions: bpftrace 0.17 has no '?' in globs, so a list of attach points."""
    first = 0 if n == 1 else n
    points = ",\n".join(f"uprobe:{lib}:hp_gen_f{i}" for i in range(first, first + n))
    return f'{points} {{ @ = count(); }}\nBEGIN {{ printf("attached\\n"); }}'


class Target:
    def __init__(self, lib):
        code = TARGET.replace("import ctypes, sys, time",
                              "import ctypes, sys, time, signal\n"
                              "signal.signal(signal.SIGUSR1, "
                              "lambda *a: setattr(sys, 'report', True))")
        self.p = subprocess.Popen([sys.executable, "-c", code, lib], stdout=subprocess.PIPE,
                                  text=True)
        if self.p.stdout.readline().strip() != "ready":
            sys.exit("attach_bench: the target did not start")

    def worst_gap_ms(self):
        self.p.send_signal(signal.SIGUSR1)
        line = self.p.stdout.readline().split()
        return float(line[1])

    def close(self):
        self.p.kill()
        self.p.wait()


def measure(cmd, env, timeout):
    """(attach ms, detach ms, output) or raises."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    out = []
    while True:
        line = p.stdout.readline()
        if not line:
            p.wait()
            raise RuntimeError(f"{cmd[0]} ended before attaching ({p.returncode}): "
                               f"{''.join(out)[-500:]} {p.stderr.read()[-1500:]}")
        out.append(line)
        if line.strip() == "attached":
            break
        if time.monotonic() - t0 > timeout:
            p.kill()
            raise RuntimeError(f"{cmd[0]}: no marker within {timeout} s")
    t1 = time.monotonic()
    p.send_signal(signal.SIGINT)
    try:
        rest, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        raise RuntimeError(f"{cmd[0]}: did not exit within {timeout} s of SIGINT")
    t2 = time.monotonic()
    if p.returncode not in (0,):
        raise RuntimeError(f"{cmd[0]} exited {p.returncode}: {err[-1500:]}")
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3, "".join(out) + rest


def stats(xs):
    return {"min": min(xs), "median": statistics.median(xs), "runs": len(xs)} if xs else None


def fmt(s):
    return f"{s['min']:8.1f} {s['median']:8.1f}" if s else f"{'-':>8} {'-':>8}"


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(here, "..", "build", "release"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bpftrace-max", type=int, default=1000)
    ap.add_argument("--sizes", default="1,100,1000,10000")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    hotprobe = os.path.join(build, "bin", "hotprobe")
    agent = os.path.join(build, "bin", "libhotprobe_agent.so")
    lib = os.path.join(build, "bench", "probe_fixture", "libhp_probe_gen.so")
    for f in (hotprobe, agent, lib):
        if not os.path.exists(f):
            sys.exit(f"attach_bench: {f} is missing: cmake --build {build} --target "
                     "hotprobe_cli hotprobe_agent hp_probe_gen")
    bpftrace = shutil.which("bpftrace")
    env = dict(os.environ, HOTPROBE_AGENT=agent, BPFTRACE_MAX_PROBES="20000")
    sizes = [int(s) for s in a.sizes.split(",")]
    res = {n: {"hotprobe_attach": [], "hotprobe_detach": [], "stall": [], "bpftrace_attach": [],
               "bpftrace_detach": []} for n in sizes}
    target = Target(lib)
    try:
        for r in range(a.rounds):
            for n in sizes:
                target.worst_gap_ms()  # reset
                at, de, out = measure([hotprobe, "attach", "-p", str(target.p.pid), "-e",
                                       script(lib, n)], env, 60)
                stall = target.worst_gap_ms()
                if f"Attaching {n + 1} probe" not in out:
                    sys.exit(f"attach_bench: hotprobe did not attach {n} probes:\n{out[:500]}")
                res[n]["hotprobe_attach"].append(at)
                res[n]["hotprobe_detach"].append(de)
                res[n]["stall"].append(stall)
                if bpftrace and n <= a.bpftrace_max:
                    at, de, _ = measure([bpftrace, "-p", str(target.p.pid), "-e",
                                         bpftrace_script(lib, n)], env, 600)
                    res[n]["bpftrace_attach"].append(at)
                    res[n]["bpftrace_detach"].append(de)
                print(f"round {r + 1}/{a.rounds} {n} probes done", file=sys.stderr)
    finally:
        target.close()

    machine = f"{os.cpu_count()} CPUs, {os.uname().release}"
    print(f"hotprobe attach vs bpftrace -p on one running process ({machine}); ms, "
          f"min and median of {a.rounds} runs")
    print(f"{'probes':>7} | {'hotprobe attach':>17} | {'detach':>17} | {'target stall':>17} |"
          f" {'bpftrace attach':>17} | {'detach':>17}")
    print(f"{'':>7} | {'min':>8} {'median':>8} | {'min':>8} {'median':>8} | {'min':>8} "
          f"{'median':>8} | {'min':>8} {'median':>8} | {'min':>8} {'median':>8}")
    table = {}
    for n in sizes:
        row = {k: stats(v) for k, v in res[n].items()}
        table[n] = row
        print(f"{n:>7} | {fmt(row['hotprobe_attach'])} | {fmt(row['hotprobe_detach'])} | "
              f"{fmt(row['stall'])} | {fmt(row['bpftrace_attach'])} | "
              f"{fmt(row['bpftrace_detach'])}")
    if not bpftrace:
        print("(bpftrace not found: its columns are empty)")
    elif any(n > a.bpftrace_max for n in sizes):
        print(f"(bpftrace measured up to {a.bpftrace_max} probes; --bpftrace-max raises it)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": machine, "rounds": a.rounds, "results": table}, f, indent=1)


if __name__ == "__main__":
    main()
