#!/usr/bin/env python3
"""Run bpftrace's own runtime test cases for uprobe, uretprobe and usdt against hotprobe.

The cases are read from a bpftrace checkout given on the command line (nothing of it is
copied into this repository): its tests/runtime/* case files, the test programs in
tests/testprogs and tests/testlibs (built here into a temporary directory with the flags
bpftrace's CMake uses), the scripts and expected-output files the cases name.

Each case whose probes are all uprobe/uretprobe/usdt (plus BEGIN/END/interval), or that
lists such probes (-l), is translated to hotprobe's command line:
  * `-c CMD` and `-p PID` stay (`hotprobe run -c`, `hotprobe attach -p`);
  * a probe on a path whose program the case starts beforehand (BEFORE) becomes
    `hotprobe attach -p PID-of-that-program`;
  * a probe on a path whose program the case starts once bpftrace is attached (AFTER)
    becomes `hotprobe run ... -- AFTER`;
  * `-f json` is `-o json`, `-o FILE` is `--output FILE`; `-q` is dropped (hotprobe's banner
    is then in the output, which no EXPECT of such a case looks at); any other bpftrace
    option is passed on, so hotprobe's own refusal is what the report shows.
Cases with kernel probes, or a user probe with no program to run (system-wide probing),
are "not applicable" and the reason is named. The output is checked as bpftrace's engine
does (EXPECT: a whole line, EXPECT_REGEX: re.search with re.M, EXPECT_NONE,
EXPECT_REGEX_NONE, EXPECT_FILE, EXPECT_JSON).

Usage (one command):
  scripts/bpftrace_cases.py --bpftrace-src ~/src/bpftrace --hotprobe build/release/bin/hotprobe
Options: --bpftrace BIN runs the same selected cases with bpftrace as the reference;
--compare-src DIR (another checkout, e.g. the tag of the installed bpftrace) marks the
cases that are newer than it or changed since; --markdown/--json write the report.
Exit status: 0 when the run completed (whatever the results), 2 for a bad command line or
a checkout that cannot be read.
"""

import argparse
import json
import os
import platform
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict, defaultdict

DEFAULT_TIMEOUT = 5
ATTACH_TIMEOUT = 10

USER_PROBES = {"uprobe", "uretprobe", "usdt", "u", "ur", "U"}
NEUTRAL_PROBES = {"BEGIN", "END", "begin", "end", "interval", "i"}
OTHER_PROBES = {
    "kprobe", "k", "kretprobe", "kr", "tracepoint", "t", "rawtracepoint", "rt", "fentry",
    "f", "fexit", "fr", "software", "s", "hardware", "h", "profile", "p", "watchpoint", "w",
    "asyncwatchpoint", "aw", "iter", "it", "self", "kfunc", "kretfunc", "bench", "test",
}
ALL_PROBES = USER_PROBES | NEUTRAL_PROBES | OTHER_PROBES
CANONICAL = {"u": "uprobe", "ur": "uretprobe", "U": "usdt", "k": "kprobe", "kr": "kretprobe",
             "t": "tracepoint", "rt": "rawtracepoint", "f": "fentry", "fr": "fexit",
             "s": "software", "h": "hardware", "p": "profile", "w": "watchpoint",
             "aw": "asyncwatchpoint", "it": "iter", "i": "interval"}

SHELL_OPS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>&1", ")", "("}

# The line hotprobe prints once its probes are attached (bpftrace prints its banner
# before it attaches; its engine waits for __BPFTRACE_NOTIFY_PROBES_ATTACHED instead).
ATTACHED_RE = re.compile(
    r'^(Attach(ing|ed) \d+ probes?(\.\.\.)?|\{"type": ?"attached_probes".*)$')


class Case:
    def __init__(self, suite, fields):
        self.suite = suite
        self.__dict__.update(fields)

    @property
    def ident(self):
        return f"{self.suite}.{self.name}"


# ---------------------------------------------------------------------------------------
# Case files: the directive format bpftrace's runtime engine reads.

def parse_case_file(path, suite):
    cases = []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    block = []
    for n, line in enumerate(lines, 1):
        if line.startswith("#"):
            continue
        if line != "\n":
            block.append(line)
        if (line == "\n" or n == len(lines)) and block:
            case = parse_block(block, suite)
            if case is not None:
                cases.append(case)
            block = []
    return cases


def parse_block(block, suite):
    c = dict(name="", run="", prog="", expects=[], timeout=None, befores=[], after="",
             setup="", cleanup="", kernel_min="", kernel_max="", requires=[], env={},
             arch=[], features=set(), neg_features=set(), will_fail=False, new_pidns=False,
             skip_if_env_has=None, return_code=0, localize_ts=-1)
    prev = ""
    for item in block:
        if prev and item[:len(prev) + 1].isspace():
            cont = item[len(prev) + 1:].rstrip("\n")
            if prev == "PROG":
                c["prog"] += "\n" + cont
                continue
            if prev in ("EXPECT", "EXPECT_REGEX"):
                c["expects"][-1][1] += "\n" + cont
                continue
        parts = item.strip().split(maxsplit=1)
        if not parts:
            continue
        key, val = parts[0], (parts[1] if len(parts) > 1 else "")
        prev = key
        modes = {"EXPECT": "text", "EXPECT_NONE": "text_none", "EXPECT_REGEX": "regex",
                 "EXPECT_REGEX_NONE": "regex_none", "EXPECT_FILE": "file",
                 "EXPECT_JSON": "json"}
        if key == "NAME":
            c["name"] = val
        elif key == "RUN":
            c["run"] = val
        elif key == "PROG":
            c["prog"] = val
        elif key in modes:
            c["expects"].append([modes[key], val])
        elif key == "TIMEOUT":
            c["timeout"] = int(val.strip())
        elif key == "BEFORE":
            c["befores"].append(val)
        elif key == "AFTER":
            c["after"] = val
        elif key == "SETUP":
            c["setup"] = val
        elif key == "CLEANUP":
            c["cleanup"] = val
        elif key == "MIN_KERNEL":
            c["kernel_min"] = val
        elif key == "MAX_KERNEL":
            c["kernel_max"] = val
        elif key == "REQUIRES":
            c["requires"].append(val)
        elif key == "ENV":
            for e in val.split():
                k, _, v = e.partition("=")
                c["env"][k] = v
        elif key == "ARCH":
            c["arch"] = [x.strip() for x in val.split("|")]
        elif key == "REQUIRES_FEATURE":
            for f in val.split():
                (c["neg_features"] if f.startswith("!") else c["features"]).add(f.lstrip("!"))
        elif key == "WILL_FAIL":
            c["will_fail"] = True
        elif key == "NEW_PIDNS":
            c["new_pidns"] = True
        elif key == "SKIP_IF_ENV_HAS":
            k, _, v = val.partition("=")
            c["skip_if_env_has"] = (k, v)
        elif key == "RETURN_CODE":
            c["return_code"] = int(val.strip())
        elif key == "LOCALIZE_TIMESTAMPS":
            c["localize_ts"] = int(val.strip())
        # Directives this script does not know are kept out of the way: the case still runs.
    if not c["name"] or not (c["run"] or c["prog"]):
        return None
    if c["timeout"] is None:
        c["timeout"] = DEFAULT_TIMEOUT
    return Case(suite, c)


def arch_matches(case):
    if not case.arch:
        return True
    host = {platform.machine().lower(), "be" if sys.byteorder == "big" else "le"}
    pos = {a for a in case.arch if not a.startswith("!")}
    neg = {a[1:] for a in case.arch if a.startswith("!")}
    if pos and not host & pos:
        return False
    return not (neg and host & neg)


def read_cases(src):
    root = os.path.join(src, "tests", "runtime")
    if not os.path.isdir(root):
        print(f"bpftrace_cases: {root} is not a directory: give --bpftrace-src the top of "
              "a bpftrace checkout (the one holding tests/runtime)", file=sys.stderr)
        sys.exit(2)
    # bpftrace's older engines (0.17 and before) read EXPECT as a regular expression (and
    # have no EXPECT_NONE): the mode follows the engine of the checkout.
    runner = os.path.join(root, "engine", "runner.py")
    old_engine = os.path.isfile(runner) and "text_none" not in open(runner).read()
    out = []
    for dirpath, subdirs, files in os.walk(root):
        for skip in ("engine", "scripts", "outputs"):
            if skip in subdirs:
                subdirs.remove(skip)
        subdirs.sort()
        for fn in sorted(files):
            if fn.startswith(".") or fn.endswith((".py", ".md")):
                continue
            out.extend(parse_case_file(os.path.join(dirpath, fn), fn))
    if old_engine:
        for c in out:
            c.expects = [["regex" if m == "text" else m, e] for m, e in c.expects]
    return out


# ---------------------------------------------------------------------------------------
# The bpftrace command line of a case, and the probes of its program.

class BtCall:
    """One `{{BPFTRACE}} ...` call of a RUN line (or the PROG form), split into options."""

    def __init__(self):
        self.prog = None  # script text (-e)
        self.script_file = None
        self.c = None
        self.p = None
        self.list = False
        self.list_verbose = False
        self.fmt = None
        self.outfile = None
        self.quiet = False
        self.other = []  # options hotprobe is handed as they are
        self.positional = []  # $1... parameters
        self.list_pattern = None


BT_FLAGS_WITH_VALUE = {"-e", "-c", "-p", "--pid", "-f", "--format", "-o", "--output", "-B",
                       "--include", "-I", "--dwarf-pid", "--debuginfo", "--btf", "-x",
                       "--aot", "--usdt-file-activation"}


def parse_bt_args(tokens):
    call = BtCall()
    i = 0
    while i < len(tokens):
        t = tokens[i]
        val = tokens[i + 1] if i + 1 < len(tokens) else None
        if t == "-e":
            call.prog = val
        elif t == "-c":
            call.c = val
        elif t in ("-p", "--pid"):
            call.p = val
        elif t in ("-l", "-lv"):
            call.list = True
            call.list_verbose = t == "-lv"
            i += 1
            continue
        elif t == "-v" and call.list:
            call.list_verbose = True
            i += 1
            continue
        elif t in ("-f", "--format"):
            call.fmt = val
        elif t in ("-o", "--output"):
            call.outfile = val
        elif t == "-q":
            call.quiet = True
            i += 1
            continue
        elif t == "--verify-llvm-ir":
            i += 1
            continue
        elif t.startswith("-") and len(t) > 1:
            if t in BT_FLAGS_WITH_VALUE and val is not None:
                call.other += [t, val]
                i += 2
            else:
                call.other.append(t)
                i += 1
            continue
        else:
            if call.list and call.list_pattern is None:
                call.list_pattern = t
            elif call.prog is None and call.script_file is None and not call.list:
                call.script_file = t
            else:
                call.positional.append(t)
            i += 1
            continue
        i += 2
    return call


def split_run(run):
    """RUN line -> (tokens, index of each {{BPFTRACE}} call and its argument span)."""
    lex = shlex.shlex(run, posix=True, punctuation_chars="|&;<>()")
    lex.whitespace_split = True
    try:
        tokens = list(lex)
    except ValueError:
        return None, []
    calls = []
    for i, t in enumerate(tokens):
        if t.startswith("{{BPFTRACE}}"):
            j = i + 1
            while j < len(tokens) and tokens[j] not in SHELL_OPS:
                j += 1
            calls.append((i, j))
    return tokens, calls


def strip_strings(text):
    text = re.sub(r'"(\\.|[^"\\])*"', '""', text)
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def probe_types(prog):
    """The probe kinds of a script (canonical names), read at probe positions only."""
    text = strip_strings(prog)
    kinds = set()
    # A probe starts the script, or follows a closing brace, a comma of a probe list, or a
    # semicolon after a struct definition or config block.
    for m in re.finditer(r'(?:^|[};,\n])\s*([A-Za-z]+)\s*:(?![:0-9])', text):
        word = m.group(1)
        if word in ALL_PROBES:
            kinds.add(CANONICAL.get(word, word))
    for m in re.finditer(r'(?:^|[};\s])(BEGIN|END|begin|end)\s*(?:[{/,]|$)', text):
        kinds.add(m.group(1).upper())
    return kinds


def probe_paths(prog):
    text = strip_strings(prog)
    return re.findall(r'(?:uprobe|uretprobe|usdt|u|ur|U):([^:{\s,]+)', text)


# ---------------------------------------------------------------------------------------
# Selection.

class Plan:
    """How one applicable case runs: a shell command line (for the tool) and what to start."""

    def __init__(self):
        self.na = None  # reason when not applicable
        self.call = None  # BtCall of the (first) bpftrace call
        self.mode = None  # "list", "run", "attach", "as-is"
        self.after_is_target = False
        self.before_target = None  # index of the BEFORE whose pid hotprobe attaches to
        self.prog_text = ""


def script_text(src, work_rel):
    for base in (os.path.join(src, "tests"),):
        p = os.path.join(base, work_rel)
        if os.path.isfile(p):
            with open(p, encoding="utf-8", errors="replace") as f:
                return f.read()
    return None


def plan_case(case, src):
    plan = Plan()
    if case.run:
        tokens, calls = split_run(case.run)
        if tokens is None or not calls:
            if not re.search(r"\b(uprobe|uretprobe|usdt|u|ur|U):", case.run):
                return None
            plan.na = ("bpftrace runs inside a shell string of a wrapper command"
                       if "{{BPFTRACE}}" in case.run else "RUN does not call bpftrace")
            return plan
        i, j = calls[0]
        call = parse_bt_args(tokens[i + 1:j])
    else:
        call = BtCall()
        call.prog = case.prog
        if case.expects and case.expects[0][0] == "json":
            call.fmt = "json"
            call.quiet = True
    plan.call = call
    text = call.prog or ""
    if call.script_file:
        text = script_text(src, call.script_file) or ""
    plan.prog_text = text

    if call.list:
        pattern = call.list_pattern or ""
        kinds = {CANONICAL.get(k, k) for k in re.findall(r'^([A-Za-z*]+):', pattern)}
        if call.prog:
            kinds |= probe_types(call.prog)
        if not (kinds & {"uprobe", "uretprobe", "usdt", "*"}) and not (call.p and not pattern):
            return None  # a listing of other probe kinds: not a user-space case
        plan.mode = "list"
        return plan

    kinds = probe_types(text)
    if not kinds & {"uprobe", "uretprobe", "usdt"}:
        return None  # no user-space probe: outside this conformance set
    if case.new_pidns:
        plan.na = "NEW_PIDNS: the tool itself runs inside a new pid namespace"
        return plan
    others = sorted(k for k in kinds if k not in {"uprobe", "uretprobe", "usdt", "BEGIN",
                                                  "END", "interval"})
    if others:
        plan.na = "kernel or system-wide probes: " + ", ".join(others)
        return plan
    if case.neg_features:
        plan.na = "tests bpftrace built without: " + ", ".join(sorted(case.neg_features))
        return plan
    if case.run and len(calls) > 1:
        plan.na = "RUN calls bpftrace more than once"
        return plan
    if case.run and tokens[0] != tokens[calls[0][0]]:
        plan.na = "bpftrace runs inside a wrapper command (" + tokens[0] + ")"
        return plan
    if call.c or call.p:
        plan.mode = "run" if call.c else "attach"
        return plan
    paths = probe_paths(text)
    if case.befores:
        # The program the probe's path names, started before the tool: attach to it.
        plan.mode = "attach"
        plan.before_target = 0
        for n, b in enumerate(case.befores):
            prog = os.path.basename(b.split()[-1])
            if any(os.path.basename(p.strip('"')) == prog for p in paths):
                plan.before_target = n
                break
        return plan
    if case.after:
        argv = shlex.split(case.after)
        if argv and argv[0] in ("unshare", "nsenter"):
            plan.na = "AFTER starts the program in another namespace (" + argv[0] + ")"
            return plan
        plan.mode = "run"
        plan.after_is_target = True
        return plan
    plan.na = "system-wide: a probe on a path with no -c/-p and no program the case starts"
    return plan


# ---------------------------------------------------------------------------------------
# Command lines.

def q(args):
    return " ".join(shlex.quote(a) for a in args)


def hotprobe_args(hotprobe, call, after_argv=None, before_pid=None):
    """hotprobe's argv for one bpftrace call (see the module comment for the mapping)."""
    if call.list:
        args = [hotprobe, "list"]
        if call.list_verbose:
            args.append("-v")
        if call.p:
            args += ["-p", call.p]
        if call.prog:
            args += ["-e", call.prog]
        args += call.other
        if call.list_pattern:
            args.append(call.list_pattern)
        return args
    attach = bool(call.p) or (not call.c and before_pid is not None)
    args = [hotprobe, "attach" if attach else "run"]
    if call.script_file:
        args.append(call.script_file)
    else:
        args += ["-e", call.prog or ""]
    if call.fmt and call.fmt != "text":
        args += ["-o", call.fmt]
    if call.outfile:
        args += ["--output", call.outfile]
    args += call.other
    args += call.positional
    if attach:
        args += ["-p", str(call.p or before_pid)]
    elif call.c:
        args += ["-c", call.c]
    elif after_argv:
        args += ["--"] + after_argv
    return args


def hotprobe_command(hotprobe, case, plan, before_pids):
    """The shell command that runs the case with hotprobe, and the environment it needs.

    A RUN line keeps its shell (pipes, $(pidof ...)): {{BPFTRACE}} becomes this script in
    --shim mode, which translates the arguments the shell hands it and runs hotprobe."""
    after_argv = shlex.split(case.after) if plan.after_is_target else None
    before_pid = before_pids[plan.before_target] if plan.before_target is not None else None
    if not case.run:
        return q(hotprobe_args(hotprobe, plan.call, after_argv, before_pid)), {}
    shim = q([sys.executable, os.path.abspath(__file__), "--shim"])
    ctx = {"hotprobe": hotprobe, "after": after_argv, "before_pid": before_pid}
    return case.run.replace("{{BPFTRACE}}", shim), {"BPFTRACE_CASES_SHIM": json.dumps(ctx)}


def shim(argv):
    ctx = json.loads(os.environ.pop("BPFTRACE_CASES_SHIM"))
    args = hotprobe_args(ctx["hotprobe"], parse_bt_args(argv), ctx["after"], ctx["before_pid"])
    try:
        os.execv(args[0], args)
    except OSError as e:
        print(f"bpftrace_cases: cannot run {args[0]}: {e.strerror} (is it being rebuilt?)",
              file=sys.stderr)
        return 126


def bpftrace_command(bpftrace, case):
    if case.run:
        return case.run.replace("{{BPFTRACE}}", shlex.quote(bpftrace))
    use_json = ["-q", "-f", "json"] if case.expects and case.expects[0][0] == "json" else []
    return q([bpftrace] + use_json + ["-e", case.prog])


# ---------------------------------------------------------------------------------------
# Test programs.

def needed_programs(cases, src):
    progs, libs = set(), set()
    for c in cases:
        blob = " ".join([c.run, c.prog, c.after, c.setup, " ".join(c.befores),
                         " ".join(c.requires)])
        for m in re.findall(r'runtime/scripts/[\w.-]+', blob):
            blob += " " + (script_text(src, m) or "")
        progs |= set(re.findall(r'testprogs/([\w-]+(?:\.bin|\.zip)?)(?![\w*/-])', blob))
        progs |= set(re.findall(r'(uprobe_test-split)', blob))
        libs |= set(re.findall(r'testlibs/lib([\w-]+)\.so', blob))
    if "usdt_lib" in progs or "usdt_lib-pie" in progs:
        libs.add("usdt_tp")
    # Files bpftrace's CMake derives from a test program (stripped copies, split DWARF, a
    # flat binary, a zip): build their program too.
    for derived, base in DERIVED_FROM.items():
        if derived in progs:
            progs.add(base)
    return sorted(progs), sorted(libs)


DERIVED_FROM = {"uprobe_test-stripped": "uprobe_test",
                "uprobe_separate_debug-stripped": "uprobe_separate_debug",
                "archive.zip": "true", "false.bin": "false", "uprobe_test-split": "uprobe_test"}


def build_derived(src, work, progs, log):
    """The derived files of testprogs/CMakeLists.txt, with binutils (objcopy, dwp, zip)."""
    tp = os.path.join(work, "testprogs")
    ext = os.path.join(tp, "external_debug")
    srcdir = os.path.join(src, "tests", "testprogs")
    steps = []
    if "uprobe_test-stripped" in progs:
        os.makedirs(ext, exist_ok=True)
        steps += [["objcopy", "--only-keep-debug", f"{tp}/uprobe_test",
                   f"{ext}/uprobe_test-stripped.debug"],
                  ["objcopy", "--strip-debug", f"{tp}/uprobe_test",
                   f"{tp}/uprobe_test-stripped"]]
    if "uprobe_separate_debug-stripped" in progs:
        dbg = os.path.join(tp, ".debug")
        os.makedirs(dbg, exist_ok=True)
        steps += [["objcopy", "--only-keep-debug", f"{tp}/uprobe_separate_debug",
                   f"{dbg}/uprobe_separate_debug-stripped.debug"],
                  ["objcopy", "--strip-debug", f"{tp}/uprobe_separate_debug",
                   f"{tp}/uprobe_separate_debug-stripped"],
                  ["objcopy", f"--add-gnu-debuglink={dbg}/uprobe_separate_debug-stripped.debug",
                   f"{tp}/uprobe_separate_debug-stripped"]]
    if "uprobe_test-split" in progs:
        for kind in ("dwo", "dwp"):
            os.makedirs(os.path.join(ext, kind), exist_ok=True)
            steps.append(["cc", "-g", "-O0", "-gsplit-dwarf", f"{srcdir}/uprobe_test.c", "-o",
                          f"{ext}/{kind}/uprobe_test-split"])
        # llvm-dwp as bpftrace's CMake uses (binutils' dwp crashes on GCC's split DWARF 5)
        steps.append([shutil.which("llvm-dwp") or "dwp", "-e", f"{ext}/dwp/uprobe_test-split",
                      "-o", f"{ext}/dwp/uprobe_test-split.dwp"])
    if "false.bin" in progs:
        steps += [["cc", "-c", f"{srcdir}/false.c", "-o", f"{tp}/false.o"],
                  ["objcopy", "-S", "--only-section=.text", "--keep-symbol=main", "-O", "binary",
                   f"{tp}/false.o", f"{tp}/false.bin"]]
    if "archive.zip" in progs:
        steps.append(["zip", "-q", "-0", "-j", f"{tp}/archive.zip", f"{tp}/true"])
    for cmd in steps:
        # dwp and the split objects look for the .dwo files in the directory they ran in
        r = subprocess.run(cmd, cwd=os.path.dirname(cmd[-1]) if cmd[0] != "objcopy" else tp,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            log(f"bpftrace_cases: {q(cmd)} failed ({r.returncode}):\n{r.stdout}")
        elif cmd[0].endswith("dwp"):
            for f in os.listdir(os.path.join(ext, "dwp")):
                if f.endswith(".dwo"):  # the package alone holds the DWARF, as in bpftrace's
                    os.unlink(os.path.join(ext, "dwp", f))


def build_programs(src, work, progs, libs, log):
    tdir = os.path.join(src, "tests")
    inc = os.path.join(tdir, "include")
    os.makedirs(os.path.join(work, "testprogs"), exist_ok=True)
    os.makedirs(os.path.join(work, "testlibs"), exist_ok=True)
    cc = os.environ.get("CC", "cc")
    cxx = os.environ.get("CXX", "c++")
    jobs = []
    have_sdt = subprocess.run([cc, "-fsyntax-only", "-x", "c", "-"],
                              input=b"#include <sys/sdt.h>\n", stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0
    # bpftrace's CMake defines HAVE_SYSTEMTAP_SYS_SDT_H for the test libraries too (their
    # USDT probes are behind it: without it libusdt_tp.so has none)
    sdt_flag = ["-DHAVE_SYSTEMTAP_SYS_SDT_H=1"] if have_sdt else []
    for lib in libs:
        s = os.path.join(tdir, "testlibs", lib + ".c")
        if os.path.isfile(s):
            out = os.path.join(work, "testlibs", f"lib{lib}.so")
            jobs.append(("lib", [cc, "-g", "-O0", "-fPIC", "-shared", *sdt_flag, "-I", inc, s,
                                 "-o", out], out))
    prog_jobs = []
    for name in progs:
        if name in DERIVED_FROM:
            continue
        base, pie = (name[:-4], True) if name.endswith("-pie") else (name, False)
        out = os.path.join(work, "testprogs", name)
        cflags = ["-g", "-O0", "-fno-omit-frame-pointer", "-mno-omit-leaf-frame-pointer"]
        if have_sdt:
            # bpftrace's CMake defines this when systemtap's header is there (older test
            # programs put their USDT probes behind it)
            cflags.append("-DHAVE_SYSTEMTAP_SYS_SDT_H=1")
        if base == "uprobe_nofp":
            cflags = ["-g", "-O1", "-fomit-frame-pointer", "-fno-optimize-sibling-calls"]
        link = ["-pie"] if pie else ["-no-pie"]
        if pie:
            cflags.append("-fpie")
        extra = []
        if base == "usdt_lib":
            extra = ["-fPIC", "-I", os.path.join(tdir, "testlibs"),
                     "-L", os.path.join(work, "testlibs"), "-lusdt_tp",
                     "-Wl,-rpath," + os.path.join(work, "testlibs")]
        s_c = os.path.join(tdir, "testprogs", base + ".c")
        s_cpp = os.path.join(tdir, "testprogs", base + ".cpp")
        s_go = os.path.join(tdir, "testprogs", base + ".go")
        s_rs = os.path.join(tdir, "testprogs", base + ".rs")
        if os.path.isfile(s_c):
            cmd = [cc] + cflags + ["-I", inc, s_c, "-o", out] + link + extra
        elif os.path.isfile(s_cpp):
            cmd = [cxx] + cflags + ["-I", inc, s_cpp, "-o", out] + link
        elif os.path.isfile(s_go) and shutil.which("go"):
            cmd = ["go", "build", "-o", out, s_go]
        elif os.path.isfile(s_rs) and shutil.which("rustc"):
            cmd = ["rustc", "-C", "symbol_mangling_version=v0", "-o", out, s_rs]
        else:
            log(f"bpftrace_cases: no source or compiler for testprogs/{name}: cases that "
                "need it fail or are skipped by their REQUIRES")
            continue
        prog_jobs.append(("prog", cmd, out))
    # Libraries first (usdt_lib links one), then the programs two at a time.
    for kind, cmd, out in jobs:
        run_build(cmd, out, log)
        os.chmod(out, 0o644)  # bpftrace's CMake clears the executable bit of its testlibs
    running = []
    for job in prog_jobs:
        running.append((subprocess.Popen(job[1], stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, cwd=tdir,
                                         env=dict(os.environ, GOFLAGS="-mod=mod",
                                                  GOCACHE=os.path.join(work, ".gocache"))),
                        job))
        if len(running) >= 2:
            finish_build(running.pop(0), log)
    while running:
        finish_build(running.pop(0), log)
    build_derived(src, work, set(progs), log)


def run_build(cmd, out, log):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        log(f"bpftrace_cases: building {out} failed:\n  {q(cmd)}\n{r.stdout}")


def finish_build(item, log):
    p, (_, cmd, out) = item
    text = p.communicate()[0].decode(errors="replace")
    if p.returncode != 0:
        log(f"bpftrace_cases: building {out} failed:\n  {q(cmd)}\n{text}")


# ---------------------------------------------------------------------------------------
# Running one case.

def all_processes():
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        comm = st[st.index("(") + 1:st.rindex(")")]
        ppid = int(st[st.rindex(")") + 2:].split()[1])
        found.append((int(d), ppid, comm))
    return found


def descendants_named(root_pid, comm):
    procs = all_processes()
    kids = defaultdict(list)
    for pid, ppid, c in procs:
        kids[ppid].append((pid, c))
    todo, seen = [root_pid], []
    while todo:
        p = todo.pop()
        for pid, c in kids.get(p, []):
            if c == comm:
                seen.append(pid)
            todo.append(pid)
    return seen


def kill_group(p, sig):
    try:
        os.killpg(os.getpgid(p.pid), sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop(p, grace=2.0):
    """SIGINT (the tool's Ctrl-C), then SIGTERM, then SIGKILL, to the process group."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 1.0), (signal.SIGKILL, 5.0)):
        if p.poll() is not None:
            return
        kill_group(p, sig)
        try:
            p.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass


# bpftrace's attach banner in its newer words ("Attached N probes", on stderr) and in 0.17's
# ("Attaching N probes...", on stdout), which hotprobe prints: the same number, said two
# ways; a case that expects the one is matched by the other with the same N.
ATTACHED = re.compile(r"Attached (\d+) (probes?)")


def check_expect(mode, expect, output, work, localize_ts):
    try:
        if mode in ("text", "regex") and ATTACHED.fullmatch(expect.strip()):
            n, word = ATTACHED.fullmatch(expect.strip()).groups()
            return bool(re.search(f"^\\s*(Attached {n} {word}|Attaching {n} {word}\\.\\.\\.)\\s*$",
                                  output, re.M))
        if mode == "text":
            return bool(re.search(f"^\\s*{re.escape(expect)}\\s*$", output, re.M))
        if mode == "text_none":
            return not re.search(f"^\\s*{re.escape(expect)}\\s*$", output, re.M)
        if mode == "regex":
            return bool(re.search(expect, output, re.M))
        if mode == "regex_none":
            return not re.search(expect, output, re.M)
        with open(os.path.join(work, expect)) as f:
            want = f.read().strip()
        if mode == "file":
            if localize_ts >= 0:
                want = time.strftime(want, time.localtime(localize_ts))
            return output.strip() == want
        got = output.strip().splitlines()
        if expect.endswith(".ndjson"):
            wl = want.splitlines()
            return len(wl) == len(got) and all(
                json.loads(a) == json.loads(b) for a, b in zip(got, wl))
        return len(got) == 1 and json.loads(got[0]) == json.loads(want)
    except Exception:  # an unreadable file or bad JSON is a failed expectation
        return False


class Result:
    def __init__(self, status, detail="", output="", command="", returncode=None):
        self.status = status  # pass, fail, timeout, skip, na
        self.returncode = returncode
        self.detail = detail
        self.output = output
        self.command = command


def requirements_met(case, tool, features, work):
    for req in case.requires:
        if subprocess.call(req, shell=True, cwd=work, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL) != 0:
            return f"REQUIRES unmet: {req}"
    if tool == "bpftrace":
        for f in case.features:
            if not features.get(f, False):
                return f"bpftrace lacks feature {f}"
        for f in case.neg_features:
            if features.get(f, False):
                return f"bpftrace has feature {f}"
        kernel = tuple(int(x) for x in re.findall(r"\d+", os.uname().release)[:3])
        if case.kernel_min:
            if kernel < tuple(int(x) for x in re.findall(r"\d+", case.kernel_min)):
                return f"kernel older than {case.kernel_min}"
        if case.kernel_max:
            if kernel > tuple(int(x) for x in re.findall(r"\d+", case.kernel_max)):
                return f"kernel newer than {case.kernel_max}"
    if case.skip_if_env_has and os.environ.get(case.skip_if_env_has[0]) == \
            case.skip_if_env_has[1]:
        return "disabled by environment"
    return None


def run_case(case, plan, tool, binary, work, features, scale, verbose):
    skip = requirements_met(case, tool, features, work)
    if skip:
        return Result("skip", skip)
    befores, before_pids, after = [], [], None
    if case.setup:
        if subprocess.call(case.setup, shell=True, cwd=work) != 0:
            return Result("fail", "SETUP failed")
    try:
        for b in case.befores:
            try:
                bp = subprocess.Popen(shlex.split(b), cwd=work, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            except OSError as e:
                return Result("fail", f"BEFORE {b} cannot start: {e.strerror} (a test program "
                              "that did not build)")
            befores.append(bp)
        for b, bp in zip(case.befores, befores):
            comm = os.path.basename(b.split()[-1])[:15]
            deadline = time.time() + max(case.timeout, 5) * scale
            pid = None
            while time.time() < deadline and pid is None:
                # The program itself, or the child a wrapper started under that name.
                for cand in [bp.pid] + descendants_named(bp.pid, comm):
                    try:
                        with open(f"/proc/{cand}/comm") as f:
                            if f.read().strip() == comm:
                                pid = cand
                                break
                    except OSError:
                        pass
                else:
                    time.sleep(0.05)
            if pid is None:
                return Result("fail", f"BEFORE {b} did not start")
            before_pids.append(pid)
        extra_env = {}
        if tool == "hotprobe":
            cmd, extra_env = hotprobe_command(binary, case, plan, before_pids)
        else:
            cmd = bpftrace_command(binary, case)
        if before_pids:
            cmd = cmd.replace("{{BEFORE_PID}}", str(before_pids[0]))
        env = {"PATH": os.environ.get("PATH", ""), "test": case.name,
               "__BPFTRACE_NOTIFY_PROBES_ATTACHED": "1"}
        env.update(case.env)
        env.update(extra_env)
        p = subprocess.Popen(cmd, shell=True, cwd=work, env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines = queue.Queue()

        def reader():
            for raw in iter(p.stdout.readline, b""):
                lines.put(raw.decode("utf-8", errors="backslashreplace"))
            lines.put(None)

        threading.Thread(target=reader, daemon=True).start()
        output, attached, timed_out = "", False, False
        exact = any(m in ("file", "json") for m, _ in case.expects)
        deadline = time.time() + ATTACH_TIMEOUT * scale
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.time()))
            except queue.Empty:
                timed_out = True
                stop(p)
                while True:
                    try:
                        line = lines.get(timeout=5)
                    except queue.Empty:
                        break
                    if line is None:
                        break
                    output += line
                break
            if line is None:
                break
            output += line
            marker = line.rstrip("\n")
            if not attached and (marker == "__BPFTRACE_NOTIFY_PROBES_ATTACHED" if
                                 tool == "bpftrace" else ATTACHED_RE.match(marker)):
                attached = True
                if line.startswith("__BPFTRACE_NOTIFY") or exact:
                    # The engine's own marker is no output; an exact match starts here.
                    output = "" if exact else output[:-len(line)]
                deadline = time.time() + case.timeout * scale
                if case.after and not (tool == "hotprobe" and plan.after_is_target):
                    after = subprocess.Popen(case.after, shell=True, cwd=work,
                                             start_new_session=True,
                                             stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL)
        p.wait()
    finally:
        for bp in befores:
            if bp.poll() is None:
                kill_group(bp, signal.SIGKILL)
            bp.wait()
        if after is not None:
            if after.poll() is None:
                kill_group(after, signal.SIGKILL)
            after.wait()
        if case.cleanup:
            subprocess.call(case.cleanup, shell=True, cwd=work)
    failed = [(m, e) for m, e in case.expects
              if not check_expect(m, e, output, work, case.localize_ts)]
    if verbose:
        print(f"--- {case.ident}\n$ {cmd}\n{output}", file=sys.stderr)
    # hotprobe run's exit status is the traced program's, bpftrace's is its own: the status
    # is compared only where the tool's own status is what the case looks at.
    own_status = tool == "bpftrace" or plan.mode in ("attach", "list")
    if not timed_out:
        if case.will_fail and p.returncode == 0:
            return Result("fail", "exit status 0, the case expects a failure", output, cmd, 0)
        if own_status and not case.will_fail and p.returncode != case.return_code:
            if not failed:
                return Result("fail", f"exit status {p.returncode} "
                              f"(expected {case.return_code})", output, cmd, p.returncode)
    if failed:
        m, e = failed[0]
        return Result("timeout" if timed_out else "fail", f"{m}: {e}", output, cmd,
                      p.returncode)
    return Result("pass", "", output, cmd, p.returncode)


# ---------------------------------------------------------------------------------------
# Report.

def first_error_line(output):
    lines = [ln for ln in output.splitlines()
             if not re.search(r"was stopped .* to load the agent", ln)]
    for ln in lines:
        if "ERROR" in ln:
            return ln.strip()
    for ln in lines:
        if re.search(r"\berror\b|not expected|unknown|unsupported|cannot|not supported",
                     ln, re.I) or re.match(r"hotprobe( run| attach| list)?: ", ln):
            return ln.strip()
    return ""


def blocker(result, plan):
    """The first thing in the way, as a group key: the kind of hotprobe's error, or 'output'."""
    err = first_error_line(result.output)
    call = plan.call
    if result.returncode == 2 and call and (call.other or call.positional):
        what = [o for o in call.other if o.startswith("-")]
        if call.positional:
            what.append("positional parameters ($1...)")
        return "command line: bpftrace's " + ", ".join(what) + " not in hotprobe"
    if result.status == "timeout" and not err:
        return "no output before the timeout (probe did not fire, or exit() did not end it)"
    if not result.output.strip() and not result.command:
        return "case setup: " + re.sub(r"\./\S+", "PROG", result.detail)
    if not err:
        if re.search(r"Attached \d+ probe", result.detail):
            return ("wrong output: the attach banner (bpftrace now prints 'Attached N probes', "
                    "hotprobe 'Attaching N probes...' as bpftrace 0.17 did)")
        return "wrong output: " + result.detail.split(":", 1)[0] + " not matched"
    if "were not expected" in err or "was not expected" in err or "unrecognized" in err.lower():
        m = re.search(r"expected:?\s*(\S+)", err)
        return "command line: option not in hotprobe" + (f" ({m.group(1)})" if m else "")
    e = re.sub(r"^[^:]*?:\d+:\d+(-\d+)?:\s*", "", err)  # drop a leading file:line:col
    e = re.sub(r"^(hotprobe|hotprobe run|hotprobe attach|hotprobe list):\s*", "", e)
    e = e.split("; ")[0]  # the way out (and lists of what there is) varies case by case
    # What the language work needs by name (the function, identifier, probe type, setting)
    # stays in the key; other quoted specifics are masked so that like errors group.
    keep = re.match(r"(ERROR: )?(unknown function|unknown identifier|probe type|config:) "
                    r"'[^']*'", e)
    head = keep.group(0) if keep else ""
    rest = e[len(head):]
    rest = re.sub(r"'[^']*'|\"[^\"]*\"|`[^`]*`", "'…'", rest)
    rest = re.sub(r"0x[0-9a-fA-F]+|\b\d+\b", "N", rest)
    rest = re.sub(r"\S*/\S+", "PATH", rest)
    return "error: " + (head + rest)[:140]


def compare_status(case, old):
    if old is None:
        return ""
    o = old.get(case.ident)
    if o is None:
        return "newer than the compared checkout"
    if (o.run, o.prog, [tuple(x) for x in o.expects]) != \
            (case.run, case.prog, [tuple(x) for x in case.expects]):
        return "changed since the compared checkout"
    return "same in the compared checkout"


def md_escape(s):
    return s.replace("|", "\\|").replace("\n", " ⏎ ")


def report(rows, na, skipped_arch, tools, old, out):
    w = out.write
    counts = {t: defaultdict(int) for t in tools}
    for case, plan, res in rows:
        for t in tools:
            counts[t][res[t].status] += 1
    w(f"Cases about uprobe/uretprobe/usdt: {len(rows) + len(na)} "
      f"(applicable {len(rows)}, not applicable {len(na)}; "
      f"{skipped_arch} more are for another architecture)\n\n")
    for t in tools:
        c = counts[t]
        w(f"- {t}: passed {c['pass']}, failed {c['fail']}, timed out {c['timeout']}, "
          f"skipped {c['skip']}\n")
    w("\n")
    if "hotprobe" in tools:
        groups = OrderedDict()
        for case, plan, res in rows:
            r = res["hotprobe"]
            if r.status in ("fail", "timeout"):
                groups.setdefault(blocker(r, plan), []).append(case.ident)
        w("### hotprobe failures by first blocker\n\n")
        for key, idents in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            w(f"- **{md_escape(key)}** ({len(idents)}): {md_escape(', '.join(idents))}\n")
        w("\n")
    head = "| case | " + " | ".join(tools) + (" | vs. compared |" if old else " |")
    w("### Applicable cases\n\n" + head + "\n|" + "---|" * (len(tools) + 1 + bool(old)) + "\n")
    for case, plan, res in rows:
        cells = []
        for t in tools:
            r = res[t]
            d = r.detail
            if t == "hotprobe" and r.status in ("fail", "timeout"):
                d = first_error_line(r.output) or d
            cells.append(r.status + (": " + d[:160] if d and r.status != "pass" else ""))
        row = f"| {md_escape(case.ident)} | " + " | ".join(md_escape(c) for c in cells)
        if old:
            row += " | " + compare_status(case, old)
        w(row + " |\n")
    w("\n### Not applicable\n\n")
    by_reason = OrderedDict()
    for case, reason in na:
        by_reason.setdefault(reason, []).append(case.ident)
    for reason, idents in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        w(f"- **{md_escape(reason)}** ({len(idents)}): {md_escape(', '.join(idents))}\n")


def bpftrace_features(binary):
    try:
        out = subprocess.run([binary, "--info"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    keys = {"dwarf": "libdw (DWARF support): yes", "btf": "btf: yes",
            "get_func_ip": "get_func_ip: yes", "uprobe_multi": "uprobe_multi: yes",
            "libpath_resolv": "bcc library path resolution: yes",
            "dwunwind": "dwunwind (DWARF stack unwinding): yes",
            "blazesym": "blazesym (advanced symbolization): yes",
            "signal": "send_signal: yes", "loop": "Loop support: yes"}
    return {k: v in out for k, v in keys.items()}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--shim":
        return shim(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bpftrace-src", default=os.environ.get("BPFTRACE_SRC"),
                    help="top of a bpftrace checkout (holding tests/runtime); "
                    "default: $BPFTRACE_SRC")
    ap.add_argument("--skip-without-src", action="store_true",
                    help="exit 77 (ctest's skip) when no checkout is given")
    ap.add_argument("--fail-under", type=int, metavar="N",
                    help="exit 1 when hotprobe passes fewer than N cases (a regression floor)")
    ap.add_argument("--hotprobe", help="the hotprobe binary to test")
    ap.add_argument("--bpftrace", help="also run the cases with this bpftrace (reference)")
    ap.add_argument("--compare-src", help="another bpftrace checkout (e.g. the installed "
                    "version's tag): mark cases newer than it or changed since")
    ap.add_argument("--filter", help="regex on SUITE.NAME: run only those cases")
    ap.add_argument("--timeout-scale", type=float, default=2.0,
                    help="multiply every case's TIMEOUT and the attach timeout (busy machines)")
    ap.add_argument("--bpftrace-libc", action="store_true",
                    help="let bpftrace run cases whose probes are on files other than the "
                    "test programs (libc, /bin/bash): kernel uprobes there land in every "
                    "process on the machine")
    ap.add_argument("--work", help="build and run in this directory (kept) instead of a temp one")
    ap.add_argument("--markdown", help="write the report (markdown) to this file")
    ap.add_argument("--json", help="write every result (with the output) to this file")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each command and output")
    a = ap.parse_args()

    if not a.bpftrace_src:
        if a.skip_without_src:
            print("bpftrace_cases: skipped: no bpftrace checkout (give --bpftrace-src DIR, "
                  "set BPFTRACE_SRC, or configure with -DHOTPROBE_BPFTRACE_SRC=DIR)")
            return 77
        ap.error("--bpftrace-src DIR is needed: a bpftrace checkout "
                 "(git clone https://github.com/bpftrace/bpftrace), or set BPFTRACE_SRC")
    if not a.hotprobe and not a.bpftrace:
        ap.error("give --hotprobe BIN (and/or --bpftrace BIN for the reference run)")
    for opt, path in (("--hotprobe", a.hotprobe), ("--bpftrace", a.bpftrace)):
        if path and not (os.path.isfile(path) and os.access(path, os.X_OK)):
            found = shutil.which(path)
            if not found:
                ap.error(f"{opt} {path}: not an executable file; build hotprobe "
                         "(scripts/build.sh) or give the path of the binary")
    if a.filter:
        try:
            re.compile(a.filter)
        except re.error as e:
            ap.error(f"--filter {a.filter!r} is not a regular expression ({e}); "
                     "e.g. --filter '^uprobe\\.' for the uprobe case file")
    src = os.path.abspath(a.bpftrace_src)
    cases = read_cases(src)
    old = None
    if a.compare_src:
        old = {c.ident: c for c in read_cases(os.path.abspath(a.compare_src))}
    if a.filter:
        cases = [c for c in cases if re.search(a.filter, c.ident)]

    rows, na, skipped_arch = [], [], 0
    for c in cases:
        plan = plan_case(c, src)
        if plan is None:
            continue
        if not arch_matches(c):
            skipped_arch += 1
        elif plan.na:
            na.append((c, plan.na))
        else:
            rows.append((c, plan))

    tools = OrderedDict()
    if a.hotprobe:
        tools["hotprobe"] = os.path.abspath(a.hotprobe) if os.path.exists(a.hotprobe) \
            else shutil.which(a.hotprobe)
    if a.bpftrace:
        tools["bpftrace"] = shutil.which(a.bpftrace) or os.path.abspath(a.bpftrace)

    work = a.work or tempfile.mkdtemp(prefix="bpftrace-cases-")
    os.makedirs(work, exist_ok=True)
    link = os.path.join(work, "runtime")
    if not os.path.exists(link):
        os.symlink(os.path.join(src, "tests", "runtime"), link)
    progs, libs = needed_programs([c for c, _ in rows], src)
    print(f"bpftrace_cases: building {len(progs)} test programs and {len(libs)} libraries "
          f"in {work}", file=sys.stderr)
    build_programs(src, work, progs, libs, lambda m: print(m, file=sys.stderr))
    features = bpftrace_features(tools["bpftrace"]) if "bpftrace" in tools else {}

    results = []
    for c, plan in rows:
        res = {}
        for t, binary in tools.items():
            if t == "bpftrace" and not a.bpftrace_libc and any(
                    not p.strip('"').startswith(("./testprogs", "testprogs", "./testlibs", "*",
                                                 "/tmp/bpftrace-unshare", "/proc/"))
                    for p in probe_paths(plan.prog_text)):
                res[t] = Result("skip", "system-wide probe outside the test programs "
                                "(--bpftrace-libc to run)")
                continue
            res[t] = run_case(c, plan, t, binary, work, features, a.timeout_scale, a.verbose)
            print(f"[{res[t].status:>7}] {t:8} {c.ident}"
                  + (f": {res[t].detail[:100]}" if res[t].status != "pass" else ""),
                  file=sys.stderr, flush=True)
        results.append((c, plan, res))

    names = list(tools)
    if a.markdown:
        with open(a.markdown, "w") as f:
            report(results, na, skipped_arch, names, old, f)
    else:
        report(results, na, skipped_arch, names, old, sys.stdout)
    if a.json:
        with open(a.json, "w") as f:
            json.dump([{"case": c.ident, "mode": plan.mode,
                        "results": {t: {"status": r.status, "detail": r.detail,
                                        "command": r.command, "output": r.output}
                                    for t, r in res.items()},
                        "compared": compare_status(c, old)}
                       for c, plan, res in results]
                      + [{"case": c.ident, "not_applicable": reason} for c, reason in na],
                      f, indent=1)
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    if a.fail_under is not None and "hotprobe" in tools:
        passed = sum(1 for _, _, res in results if res["hotprobe"].status == "pass")
        if passed < a.fail_under:
            print(f"bpftrace_cases: hotprobe passed {passed} cases, fewer than the floor "
                  f"{a.fail_under} (--fail-under): a case that passed fails now; the report "
                  "above names it", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
