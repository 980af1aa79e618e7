// probe_bench: hotprobe against kernel uprobes, side by side in one run.
//
//   probe_bench [--quick] [--json FILE] [--only calls,schemes,attach,kattach] ...
//
// 1. calls:   ns per call of one noinline function (bench/probe_fixture/target.S, first
//             instruction `push %rbp`, which kernel uprobes emulate): unprobed, hotprobe
//             entry / return / entry+return probes (default and vector_registers=false),
//             int3 mode, and a kernel uprobe and uretprobe (perf_event_open, uprobe PMU).
// 2. schemes: the same entry-probe hit under each EngineOptions::scheme, 1 and 2 threads.
// 3. attach:  attach and detach of 100..50,000 probes on a generated library, batched
//             against one at a time, with grace periods and sync-core rounds spent.
// 4. kattach: kernel perf-event uprobes attach+close on the same functions, for scale.
// Then the budgets of the hot path and of batches (docs/design.md), each met or not met. It prints;
// it never asserts a timing. See docs/benchmarks-probes.md.
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "kernel_uprobe.h"

#if HP_PROBE_BENCH_HAVE_ENGINE
#include "hotprobe/probe.h"
#endif

extern "C" std::uint64_t hp_probe_target(std::uint64_t x);  // probe_fixture/target.S
extern "C" std::uint64_t hp_probe_twin(std::uint64_t x);    // same bytes, never probed

#ifndef HP_PROBE_GEN_LIB
#define HP_PROBE_GEN_LIB ""
#endif
#ifndef HP_PROBE_GEN_COUNT
#define HP_PROBE_GEN_COUNT 50000
#endif

namespace {

using Fn = std::uint64_t (*)(std::uint64_t);

// ---------------------------------------------------------------------------------------
// Options

struct Options {
  bool quick = false;
  std::string json_path;
  std::string gen_lib = HP_PROBE_GEN_LIB;
  std::string only;     // comma list of sections; empty: all
  int cpu = 0;          // the CPU the single-thread rows are pinned to; -1: no pinning
  int reps = 0;         // 0: 5 quick, 15 full
  long calls = 0;       // calls per batch for the fast rows; 0: 1M
  long slow_calls = 0;  // calls per batch for trapping rows (int3, kernel); 0: 20k quick, 100k full
  int attach_reps = 0;  // batched attach/detach repetitions; 0: 1 quick, 5 full
  int one_cap = 0;      // one-at-a-time attach/detach sample; 0: 100 quick, 1000 full
  int kernel_cap = 0;   // kernel attach+close sample; 0: 10 quick, 20 full
  bool kernel = true;
  bool ret_sites = false;  // --ret-sites: EngineOptions::return_mode = ret_instructions

  bool want(const char* section) const {
    if (only.empty()) return true;
    std::string list = "," + only + ",";
    return list.find(std::string(",") + section + ",") != std::string::npos;
  }
};

void usage(FILE* out) {
  std::fprintf(
      out,
      "usage: probe_bench [options]\n"
      "  hotprobe probes against kernel uprobes on the same function, in one run.\n"
      "  --quick            fewer calls and repetitions (well under a minute)\n"
      "  --json FILE        also write every result as JSON to FILE\n"
      "  --only LIST        sections, comma separated: calls,schemes,attach,kattach\n"
      "  --reps N           repetitions per row (default 15; quick 5)\n"
      "  --calls N          calls per batch, fast rows (default 1000000)\n"
      "  --slow-calls N     calls per batch, trapping rows (default 100000; quick 20000)\n"
      "  --attach-reps N    batched attach/detach repetitions (default 5; quick 1)\n"
      "  --one-cap N        one-at-a-time attach/detach sample (default 1000; quick 100)\n"
      "  --kernel-cap N     kernel uprobe attach+close sample (default 20; quick 10)\n"
      "  --no-kernel        skip the kernel uprobe rows\n"
      "  --ret-sites        return probes on the ret instructions (EngineOptions::return_mode);\n"
      "                     the entry+return rows then fail: the target is too short for both\n"
      "  --cpu N            pin single-thread rows to CPU N (default 0; -1: do not pin)\n"
      "  --gen-lib PATH     the generated library of %d functions (default: the built one)\n"
      "  --help             this text\n"
      "Timings are printed, never asserted. Minimum and median over repetitions.\n",
      HP_PROBE_GEN_COUNT);
}

bool parse_options(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&](const char* name) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "probe_bench: %s needs a value\n", name);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      usage(stdout);
      std::exit(0);
    } else if (a == "--quick") {
      o->quick = true;
    } else if (a == "--json") {
      o->json_path = next("--json");
    } else if (a == "--only") {
      o->only = next("--only");
    } else if (a == "--reps") {
      o->reps = std::atoi(next("--reps"));
    } else if (a == "--calls") {
      o->calls = std::atol(next("--calls"));
    } else if (a == "--slow-calls") {
      o->slow_calls = std::atol(next("--slow-calls"));
    } else if (a == "--attach-reps") {
      o->attach_reps = std::atoi(next("--attach-reps"));
    } else if (a == "--one-cap") {
      o->one_cap = std::atoi(next("--one-cap"));
    } else if (a == "--kernel-cap") {
      o->kernel_cap = std::atoi(next("--kernel-cap"));
    } else if (a == "--no-kernel") {
      o->kernel = false;
    } else if (a == "--ret-sites") {
      o->ret_sites = true;  // return probes on the ret instructions (core/ret_probe.h)
    } else if (a == "--cpu") {
      o->cpu = std::atoi(next("--cpu"));
    } else if (a == "--gen-lib") {
      o->gen_lib = next("--gen-lib");
    } else {
      std::fprintf(stderr, "probe_bench: unknown option %s\n", a.c_str());
      usage(stderr);
      return false;
    }
  }
  if (o->reps <= 0) o->reps = o->quick ? 5 : 15;
  if (o->calls <= 0) o->calls = 1000000;
  if (o->slow_calls <= 0) o->slow_calls = o->quick ? 20000 : 100000;
  // Five: the first batch of a size faults in its memory (shown apart, '1st att ms'), and
  // the host's bursts hit single repetitions; the median of five is the steady cost.
  if (o->attach_reps <= 0) o->attach_reps = o->quick ? 1 : 5;
  if (o->one_cap <= 0) o->one_cap = o->quick ? 100 : 1000;
  if (o->kernel_cap <= 0) o->kernel_cap = o->quick ? 10 : 20;
  return true;
}

// ---------------------------------------------------------------------------------------
// Time, statistics, pinning

std::uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000u +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

struct Summary {
  double min = NAN;
  double median = NAN;
  bool valid() const { return !std::isnan(median); }
};

Summary summarize(std::vector<double> v) {
  Summary s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.min = v.front();
  std::size_t n = v.size();
  s.median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  return s;
}

bool pin_to_cpu(int cpu) {
  if (cpu < 0) return false;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu % std::max(1, static_cast<int>(std::thread::hardware_concurrency())), &set);
  return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
}

void unpin() {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (unsigned i = 0; i < std::max(1u, std::thread::hardware_concurrency()); ++i)
    CPU_SET(i, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

std::atomic<std::uint64_t> g_sink{0};

std::uint64_t process_cpu_ns() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000u +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

std::uint64_t cpu_ns() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000u +
         static_cast<std::uint64_t>(ts.tv_nsec);
}

// ns per call of `calls` calls of fn, by the wall clock and by this thread's CPU time.
// The machines are shared: another process taking the CPU in the middle of a batch shows
// in the wall time but not in the CPU time, so the CPU time is the figure reported (it
// includes the kernel's time in traps and signals) and the on-CPU share shows the noise.
// The call goes through a pointer the compiler cannot see through, so every row pays the
// same call and loop.
struct BatchTime {
  double wall = 0;  // ns per call
  double cpu = 0;   // ns per call
};

__attribute__((noinline)) BatchTime time_batch(Fn fn, long calls) {
  std::uint64_t acc = 0;
  std::uint64_t c0 = cpu_ns();
  std::uint64_t t0 = now_ns();
  for (long i = 0; i < calls; ++i)
    acc += fn(static_cast<std::uint64_t>(i));
  std::uint64_t t1 = now_ns();
  std::uint64_t c1 = cpu_ns();
  g_sink.fetch_add(acc, std::memory_order_relaxed);
  return {static_cast<double>(t1 - t0) / static_cast<double>(calls),
          static_cast<double>(c1 - c0) / static_cast<double>(calls)};
}

Fn opaque(Fn fn) {
  Fn volatile v = fn;
  return v;
}

std::string fmt(double v, int prec = 1) {
  if (std::isnan(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", prec, v);
  return buf;
}

// ---------------------------------------------------------------------------------------
// Machine

struct Machine {
  std::string cpu_model;
  unsigned nproc = 0;
  std::string kernel;
  std::string date;
  std::string loadavg_start;
  std::string loadavg_end;
  std::string target_bytes;
  std::string target_first_insn;
};

std::string read_line(const char* path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

std::string bytes_hex(const void* p, int n) {
  std::string s;
  char buf[8];
  for (int i = 0; i < n; ++i) {
    std::snprintf(buf, sizeof buf, "%s%02x", i ? " " : "", static_cast<const unsigned char*>(p)[i]);
    s += buf;
  }
  return s;
}

Machine describe_machine() {
  Machine m;
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) m.cpu_model = line.substr(colon + 2);
      break;
    }
  }
  cpu_set_t set;
  m.nproc = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set)
                                                        : std::thread::hardware_concurrency();
  utsname u;
  if (uname(&u) == 0) m.kernel = std::string(u.sysname) + " " + u.release + " " + u.version;
  time_t t = time(nullptr);
  char buf[64];
  strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", gmtime(&t));
  m.date = buf;
  m.loadavg_start = read_line("/proc/loadavg");
  m.target_bytes = bytes_hex(reinterpret_cast<const void*>(&hp_probe_target), 10);
  unsigned char first = *reinterpret_cast<const unsigned char*>(&hp_probe_target);
  m.target_first_insn = first == 0x55 ? "push %rbp (55): emulated by kernel uprobes"
                                      : "NOT push %rbp: kernel uprobes may single-step";
  return m;
}

// ---------------------------------------------------------------------------------------
// Results

struct CallRow {
  std::string name;
  std::string what;
  Summary ns;      // ns per call, CPU time
  Summary wall;    // ns per call, wall clock
  Summary twin;    // ns per call of the unprobed twin, measured alternately
  Summary added;   // paired (probed - twin) per repetition
  long calls = 0;  // per batch
  std::string check;
  std::string skipped;  // non-empty: not measured, and why
};

struct SchemeRow {
  std::string scheme;
  bool tasks_trace = false;  // the default scheme, which the acceptance ratio is about
  Summary ns1;               // ns per call, 1 thread
  Summary ns2;               // ns per call per thread, 2 threads
  Summary thr1;              // M calls/s, 1 thread, wall clock
  Summary thr2;              // M calls/s total, 2 threads, wall clock
  Summary cthr1;             // the same by CPU time
  Summary cthr2;
  double ratio = NAN;       // median cthr2 / median cthr1
  double wall_ratio = NAN;  // median thr2 / median thr1
  std::string check;
  std::string skipped;
};

struct AttachRow {
  long n = 0;
  Summary attach_ms, detach_ms;          // batched, wall clock
  double first_attach_ms = NAN;          // the first repetition's attach (fresh memory)
  Summary attach_cpu_ms, detach_cpu_ms;  // batched, process CPU time (every thread)
  std::uint64_t gp_attach = 0, sc_attach = 0, gp_detach = 0, sc_detach = 0;  // max over reps
  std::uint64_t sites_jmp = 0, sites_int3 = 0;
  long failed = 0;
  std::string first_error;
  long maps_lines = 0;  // lines of /proc/self/maps after the batched detach
  long one_sample = 0;  // how many were attached one at a time
  double one_attach_ms = NAN, one_detach_ms = NAN;  // for all n (extrapolated if sample < n)
  double one_gp_per_detach = NAN, one_sc_per_attach = NAN;
  std::string skipped;
};

struct KernelAttachRow {
  long n = 0;
  long sample = 0;
  double open_ms = NAN;   // for n probes, extrapolated from the sample
  double close_ms = NAN;  // same
  double open_each_us = NAN, close_each_ms = NAN;
  std::string skipped;
};

struct Acceptance {
  std::string what;
  std::string target;
  std::string measured;
  int met = -1;  // 1 met, 0 not met, -1 not measured
};

struct Report {
  Machine machine;
  Options options;
  std::string engine_note;
  std::vector<CallRow> calls;
  std::vector<SchemeRow> schemes;
  std::vector<AttachRow> attach;
  std::vector<KernelAttachRow> kattach;
  std::vector<Acceptance> acceptance;
  std::vector<std::string> notes;
};

const CallRow* find_row(const Report& r, const std::string& name) {
  for (const auto& row : r.calls)
    if (row.name == name && row.skipped.empty()) return &row;
  return nullptr;
}

// ---------------------------------------------------------------------------------------
// Section 1: ns per call

// Measures fn against the unprobed twin, alternating batches so that both see the same
// machine. `total_calls` counts the calls made to fn (for hit checks).
CallRow measure_calls(const std::string& name, const std::string& what, Fn fn, long calls, int reps,
                      std::uint64_t* total_calls) {
  CallRow row;
  row.name = name;
  row.what = what;
  row.calls = calls;
  Fn f = opaque(fn);
  Fn twin = opaque(&hp_probe_twin);
  time_batch(twin, calls);  // warm up: page in, train predictors, settle the frequency
  time_batch(f, calls);
  std::vector<double> ns, wall, tw, diff;
  for (int r = 0; r < reps; ++r) {
    BatchTime t = time_batch(twin, calls);
    BatchTime p = time_batch(f, calls);
    tw.push_back(t.cpu);
    ns.push_back(p.cpu);
    wall.push_back(p.wall);
    diff.push_back(p.cpu - t.cpu);
  }
  *total_calls = static_cast<std::uint64_t>(calls) * static_cast<std::uint64_t>(reps + 1);
  row.ns = summarize(ns);
  row.wall = summarize(wall);
  row.twin = summarize(tw);
  row.added = summarize(diff);
  return row;
}

CallRow skipped_row(const std::string& name, const std::string& what, const std::string& why) {
  CallRow row;
  row.name = name;
  row.what = what;
  row.skipped = why;
  return row;
}

// Counting handlers write only this thread's counter: no shared cache line.
thread_local std::uint64_t t_hits = 0;

#if HP_PROBE_BENCH_HAVE_ENGINE
void empty_handler(hotprobe::Hit&) {}
void counting_handler(hotprobe::Hit&) {
  ++t_hits;
}

// Every engine of the run: --ret-sites puts every return probe on the ret instructions.
hotprobe::EngineOptions engine_options(const Options& o) {
  hotprobe::EngineOptions eo;
  if (o.ret_sites) eo.return_mode = hotprobe::ReturnMode::ret_instructions;
  return eo;
}

std::string target_spec() {
  hpbench::FileLocation loc =
      hpbench::file_location_of(reinterpret_cast<const void*>(&hp_probe_target));
  return loc.path + ":hp_probe_target";
}

struct HotprobeCase {
  const char* name;
  const char* what;
  hotprobe::Handler on_entry;
  hotprobe::Handler on_return;
  bool vector_registers;
  bool force_int3;
  int counted_per_call;  // counting handlers run per call (0: use Stats::hits)
  bool slow;
};

CallRow measure_hotprobe_case(hotprobe::Engine& engine, const HotprobeCase& c, const Options& o) {
  hotprobe::ProbeSpec spec;
  spec.target = target_spec();
  spec.on_entry = c.on_entry;
  spec.on_return = c.on_return;
  spec.vector_registers = c.vector_registers;
  spec.force_int3 = c.force_int3;
  // Site counts are the process's, and the engine may keep sites of its own (a module
  // watcher): compare with the counts before this attach.
  hotprobe::Stats base = engine.stats();
  auto handles = engine.attach(spec);
  if (!handles) return skipped_row(c.name, c.what, "attach failed: " + handles.error().message());
  if (handles->size() != 1) {
    (void)engine.detach(*handles);
    return skipped_row(c.name, c.what,
                       "attach matched " + std::to_string(handles->size()) + " sites, not 1");
  }
  hotprobe::Stats before = engine.stats();
  std::uint64_t hits_before = t_hits;
  std::uint64_t total = 0;
  CallRow row = measure_calls(c.name, c.what, &hp_probe_target, c.slow ? o.slow_calls : o.calls,
                              o.reps, &total);
  hotprobe::Stats after = engine.stats();
  std::uint64_t counted = t_hits - hits_before;
  std::uint64_t engine_hits = after.hits - before.hits;
  std::uint64_t handlers_per_call = (c.on_entry ? 1 : 0) + (c.on_return ? 1 : 0);
  char buf[160];
  if (c.counted_per_call > 0) {
    std::uint64_t want = total * static_cast<std::uint64_t>(c.counted_per_call);
    std::snprintf(buf, sizeof buf, "%s: %" PRIu64 "/%" PRIu64 " counted",
                  counted == want ? "ok" : "MISMATCH", counted, want);
  } else if (engine_hits != 0) {
    std::uint64_t want = total * handlers_per_call;
    std::snprintf(buf, sizeof buf, "%s: %" PRIu64 "/%" PRIu64 " Stats::hits",
                  engine_hits == want ? "ok" : "MISMATCH", engine_hits, want);
  } else {
    std::snprintf(buf, sizeof buf, "Stats::hits not kept");
  }
  row.check = buf;
  std::uint64_t new_jmp = before.sites_jmp - base.sites_jmp;
  std::uint64_t new_int3 = before.sites_int3 - base.sites_int3;
  if (new_jmp + new_int3 != 1)
    row.check += ", sites +" + std::to_string(new_jmp) + " jmp +" + std::to_string(new_int3) +
                 " int3 (the engine's own sites too)";
  else if (c.force_int3 && new_int3 == 0)
    row.check += ", NOT an int3 site (force_int3 ignored)";
  else if (!c.force_int3 && new_int3 != 0)
    row.check += ", int3 site (no jump)";
  else
    row.check += c.force_int3 ? ", int3 site" : ", jmp site";
  auto detached = engine.detach(*handles);
  if (!detached) row.check += ", detach failed: " + detached.error().message();
  return row;
}
#endif

CallRow measure_kernel_case(const hpbench::UprobePmu& pmu, bool retprobe, const Options& o) {
  const char* name = retprobe ? "kernel uretprobe" : "kernel uprobe";
  const char* what = retprobe ? "perf_event_open uprobe PMU, retprobe bit, counting"
                              : "perf_event_open uprobe PMU, counting";
  if (!o.kernel) return skipped_row(name, what, "--no-kernel");
  hpbench::FileLocation loc =
      hpbench::file_location_of(reinterpret_cast<const void*>(&hp_probe_target));
  if (!loc.ok()) return skipped_row(name, what, loc.error);
  hpbench::KernelUprobe probe = hpbench::KernelUprobe::open(pmu, loc.path, loc.offset, retprobe);
  if (!probe.ok()) return skipped_row(name, what, probe.error());
  std::uint64_t before = probe.count();
  std::uint64_t total = 0;
  CallRow row = measure_calls(name, what, &hp_probe_target, o.slow_calls, o.reps, &total);
  std::uint64_t counted = probe.count() - before;
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s: %" PRIu64 "/%" PRIu64 " perf count",
                counted == total ? "ok" : "MISMATCH", counted, total);
  row.check = buf;
  std::uint64_t t0 = now_ns();
  probe.close();
  std::snprintf(buf, sizeof buf, ", close %.0f ms", static_cast<double>(now_ns() - t0) / 1e6);
  row.check += buf;
  return row;
}

void section_calls(Report& report, const Options& o, const hpbench::UprobePmu& pmu) {
  bool pinned = pin_to_cpu(o.cpu);
  if (pinned) report.notes.push_back("calls: pinned to CPU " + std::to_string(o.cpu));
  std::uint64_t total = 0;
  CallRow base = measure_calls("unprobed", "the function itself, no probe", &hp_probe_target,
                               o.calls, o.reps, &total);
  base.check = "-";
  report.calls.push_back(base);

#if HP_PROBE_BENCH_HAVE_ENGINE
  auto engine = hotprobe::Engine::create(engine_options(o));
  const HotprobeCase cases[] = {
      {"entry empty", "entry probe, empty handler", &empty_handler, nullptr, true, false, 0, false},
      {"entry count", "entry probe, per-thread counting handler", &counting_handler, nullptr, true,
       false, 1, false},
      {"return empty", "return probe, empty handler", nullptr, &empty_handler, true, false, 0,
       false},
      {"entry+return", "entry and return handlers (counting), one consumer", &counting_handler,
       &counting_handler, true, false, 2, false},
      {"entry empty novec", "entry empty, vector_registers=false", &empty_handler, nullptr, false,
       false, 0, false},
      {"entry count novec", "entry count, vector_registers=false", &counting_handler, nullptr,
       false, false, 1, false},
      {"return empty novec", "return empty, vector_registers=false", nullptr, &empty_handler, false,
       false, 0, false},
      {"entry+return novec", "entry+return, vector_registers=false", &counting_handler,
       &counting_handler, false, false, 2, false},
      {"int3 entry count", "entry count, ProbeSpec::force_int3 (SIGTRAP per hit)",
       &counting_handler, nullptr, true, true, 1, true},
  };
  if (!engine) {
    for (const auto& c : cases)
      report.calls.push_back(
          skipped_row(c.name, c.what, "Engine::create failed: " + engine.error().message()));
  } else {
    for (const auto& c : cases) {
      report.calls.push_back(measure_hotprobe_case(**engine, c, o));
      std::fprintf(stderr, "  %-20s done\n", c.name);
    }
  }
  if (engine) engine.value().reset();  // gone before the kernel rows and the other sections
#else
  report.calls.push_back(skipped_row("entry empty", "hotprobe rows", report.engine_note));
#endif

  report.calls.push_back(measure_kernel_case(pmu, false, o));
  std::fprintf(stderr, "  kernel uprobe done\n");
  report.calls.push_back(measure_kernel_case(pmu, true, o));
  std::fprintf(stderr, "  kernel uretprobe done\n");

  std::uint64_t total_after = 0;
  CallRow after = measure_calls("unprobed again", "after every probe is gone (nothing left behind)",
                                &hp_probe_target, o.calls, o.reps, &total_after);
  after.check = "-";
  report.calls.push_back(after);
  if (pinned) unpin();
}

// ---------------------------------------------------------------------------------------
// Section 2: protection schemes, 1 and 2 threads

struct ThreadRun {
  std::vector<double> raw_per_call, raw_thr, raw_cthr;  // every repetition
  Summary ns_per_call;                                  // per thread, CPU time
  Summary mcalls_per_s;                                 // total, by the wall clock
  Summary cpu_mcalls_per_s;  // total, sum over threads of calls / own CPU time
  bool counts_ok = true;
  std::string check;
};

// `threads` threads, each pinned to its own CPU, call fn `calls` times per repetition,
// starting together. Per repetition: the wall time from the first start to the last end
// gives the total wall-clock throughput; each thread's CPU time gives its ns per call, and
// their sum the CPU-time throughput (what the threads would do with both CPUs to
// themselves: the shared machines rarely give them that).
ThreadRun run_threads(Fn fn, int threads, long calls, int reps, int counted_per_call) {
  std::barrier sync(threads);
  std::vector<std::vector<std::uint64_t>> start(threads), end(threads), cstart(threads),
      cend(threads);
  std::vector<std::uint64_t> counted(threads, 0);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      pin_to_cpu(t);
      Fn f = opaque(fn);
      std::uint64_t before = t_hits;
      for (int r = 0; r < reps + 1; ++r) {  // repetition 0 warms up
        sync.arrive_and_wait();
        std::uint64_t c0 = cpu_ns();
        std::uint64_t t0 = now_ns();
        std::uint64_t acc = 0;
        for (long i = 0; i < calls; ++i)
          acc += f(static_cast<std::uint64_t>(i));
        std::uint64_t t1 = now_ns();
        std::uint64_t c1 = cpu_ns();
        g_sink.fetch_add(acc, std::memory_order_relaxed);
        start[t].push_back(t0);
        end[t].push_back(t1);
        cstart[t].push_back(c0);
        cend[t].push_back(c1);
      }
      counted[t] = t_hits - before;
    });
  }
  for (auto& th : pool)
    th.join();
  std::vector<double> per_call, thr, cthr;
  for (int r = 1; r < reps + 1; ++r) {
    std::uint64_t first = ~std::uint64_t{0}, last = 0;
    double cpu_rate = 0;
    for (int t = 0; t < threads; ++t) {
      first = std::min(first, start[t][r]);
      last = std::max(last, end[t][r]);
      double ns = static_cast<double>(cend[t][r] - cstart[t][r]) / static_cast<double>(calls);
      per_call.push_back(ns);
      cpu_rate += 1e3 / ns;
    }
    thr.push_back(static_cast<double>(calls) * threads / (static_cast<double>(last - first) / 1e9) /
                  1e6);
    cthr.push_back(cpu_rate);
  }
  ThreadRun run;
  run.raw_per_call = per_call;
  run.raw_thr = thr;
  run.raw_cthr = cthr;
  run.ns_per_call = summarize(per_call);
  run.mcalls_per_s = summarize(thr);
  run.cpu_mcalls_per_s = summarize(cthr);
  if (counted_per_call > 0) {
    std::uint64_t want = static_cast<std::uint64_t>(calls) * static_cast<std::uint64_t>(reps + 1) *
                         static_cast<std::uint64_t>(counted_per_call);
    for (int t = 0; t < threads; ++t) {
      if (counted[t] != want) {
        run.counts_ok = false;
        run.check = "MISMATCH thread " + std::to_string(t) + ": " + std::to_string(counted[t]) +
                    "/" + std::to_string(want);
      }
    }
    if (run.counts_ok) run.check = "ok";
  }
  return run;
}

// 1 thread and 2 threads, alternately, one repetition each at a time, so that both see
// the same machine; fills the figures of `row`.
void measure_scaling(SchemeRow* row, long calls, int reps, int counted_per_call) {
  ThreadRun one, two;
  bool ok = true;
  std::string check;
  for (int r = 0; r < reps; ++r) {
    for (int threads : {1, 2}) {
      ThreadRun run = run_threads(&hp_probe_target, threads, calls, 1, counted_per_call);
      ThreadRun& into = threads == 1 ? one : two;
      into.raw_per_call.insert(into.raw_per_call.end(), run.raw_per_call.begin(),
                               run.raw_per_call.end());
      into.raw_thr.insert(into.raw_thr.end(), run.raw_thr.begin(), run.raw_thr.end());
      into.raw_cthr.insert(into.raw_cthr.end(), run.raw_cthr.begin(), run.raw_cthr.end());
      if (!run.counts_ok && ok) {
        ok = false;
        check = run.check;
      }
    }
  }
  row->ns1 = summarize(one.raw_per_call);
  row->ns2 = summarize(two.raw_per_call);
  row->thr1 = summarize(one.raw_thr);
  row->thr2 = summarize(two.raw_thr);
  row->cthr1 = summarize(one.raw_cthr);
  row->cthr2 = summarize(two.raw_cthr);
  row->ratio = row->cthr2.median / row->cthr1.median;
  row->wall_ratio = row->thr2.median / row->thr1.median;
  row->check = counted_per_call == 0 ? "-" : ok ? "ok" : check;
}

void section_schemes(Report& report, const Options& o) {
  int reps = o.quick ? 5 : 11;
  SchemeRow base;
  base.scheme = "unprobed";
  measure_scaling(&base, o.calls, reps, 0);
  report.schemes.push_back(base);
#if HP_PROBE_BENCH_HAVE_ENGINE
  using hotprobe::Scheme;
  for (Scheme s : hotprobe::all_schemes()) {
    SchemeRow row;
    row.scheme = std::string(hotprobe::to_string(s));
    row.tasks_trace = s == Scheme::tasks_trace;
    hotprobe::EngineOptions eo = engine_options(o);
    eo.scheme = s;
    auto engine = hotprobe::Engine::create(eo);
    if (!engine) {
      row.skipped = "Engine::create failed: " + engine.error().message();
      report.schemes.push_back(row);
      continue;
    }
    if ((*engine)->scheme() != s) {
      row.skipped =
          "engine reports scheme " + std::string(hotprobe::to_string((*engine)->scheme()));
      report.schemes.push_back(row);
      continue;
    }
    hotprobe::ProbeSpec spec;
    spec.target = target_spec();
    spec.on_entry = &counting_handler;
    auto handles = (*engine)->attach(spec);
    if (!handles) {
      row.skipped = "attach failed: " + handles.error().message();
      report.schemes.push_back(row);
      continue;
    }
    measure_scaling(&row, o.calls, reps, 1);
    auto detached = (*engine)->detach(*handles);
    if (!detached) row.check += ", detach failed: " + detached.error().message();
    report.schemes.push_back(row);
    std::fprintf(stderr, "  scheme %-12s done\n", row.scheme.c_str());
  }
#else
  SchemeRow row;
  row.scheme = "(hotprobe)";
  row.skipped = report.engine_note;
  report.schemes.push_back(row);
#endif
}

// ---------------------------------------------------------------------------------------
// Sections 3 and 4: attach and detach

struct GenLib {
  void* handle = nullptr;
  std::string path;  // as mapped (realpath)
  std::string error;
  long count = 0;
};

GenLib open_gen_lib(const Options& o) {
  GenLib lib;
  if (o.gen_lib.empty()) {
    lib.error = "no generated library (pass --gen-lib)";
    return lib;
  }
  lib.handle = dlopen(o.gen_lib.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib.handle) {
    lib.error = std::string("dlopen: ") + dlerror();
    return lib;
  }
  void* f0 = dlsym(lib.handle, "hp_gen_f0");
  if (!f0) {
    lib.error = o.gen_lib + " has no hp_gen_f0";
    return lib;
  }
  hpbench::FileLocation loc = hpbench::file_location_of(f0);
  if (!loc.ok()) {
    lib.error = loc.error;
    return lib;
  }
  lib.path = loc.path;
  long n = 0;
  while (n < HP_PROBE_GEN_COUNT && dlsym(lib.handle, ("hp_gen_f" + std::to_string(n)).c_str()))
    ++n;
  lib.count = n;
  return lib;
}

const long kAttachSizes[] = {100, 1000, 10000, 50000};
const long kQuickAttachMax = 10000;  // --quick leaves 50,000 out: it takes 5-30 s here

// Mappings of this process: the engine reads /proc/self/maps, and its cost grows with them.
long count_maps_lines() {
  std::ifstream in("/proc/self/maps");
  std::string line;
  long n = 0;
  while (std::getline(in, line))
    ++n;
  return n;
}

#if HP_PROBE_BENCH_HAVE_ENGINE
void section_attach(Report& report, const Options& o, const GenLib& lib) {
  auto engine = hotprobe::Engine::create(engine_options(o));
  if (!engine) {
    AttachRow row;
    row.skipped = "Engine::create failed: " + engine.error().message();
    report.attach.push_back(row);
    return;
  }
  hotprobe::Engine& e = **engine;
  std::vector<hotprobe::ProbeSpec> specs(static_cast<std::size_t>(lib.count));
  for (long i = 0; i < lib.count; ++i) {
    specs[i].target = lib.path + ":hp_gen_f" + std::to_string(i);
    specs[i].on_entry = &empty_handler;
  }
  // Warm up: the first attach on the library reads its 50,000 symbols.
  if (!specs.empty()) {
    auto warm = e.attach(specs[0]);
    if (warm) (void)e.detach(*warm);
  }
  for (long n : kAttachSizes) {
    AttachRow row;
    row.n = n;
    if (n > lib.count) {
      row.skipped = "the generated library has only " + std::to_string(lib.count) + " functions";
      report.attach.push_back(row);
      continue;
    }
    if (o.quick && n > kQuickAttachMax) {
      row.skipped = "left out by --quick (run without it)";
      report.attach.push_back(row);
      continue;
    }
    // One at a time first: attach(spec) in a loop, then detach(handle) in a loop. Before
    // the batched runs of this size, so it does not pay for the mappings they leave.
    long sample = std::min<long>(n, o.one_cap);
    std::vector<hotprobe::Handle> one_handles;
    hotprobe::Stats o0 = e.stats();
    std::uint64_t u0 = now_ns();
    for (long i = 0; i < sample; ++i) {
      auto r = e.attach(specs[static_cast<std::size_t>(i)]);
      if (r) one_handles.insert(one_handles.end(), r->begin(), r->end());
    }
    std::uint64_t u1 = now_ns();
    hotprobe::Stats o1 = e.stats();
    for (const auto& h : one_handles)
      (void)e.detach(h);
    std::uint64_t u2 = now_ns();
    hotprobe::Stats o2 = e.stats();
    double scale = static_cast<double>(n) / static_cast<double>(sample);
    row.one_sample = sample;
    row.one_attach_ms = static_cast<double>(u1 - u0) / 1e6 * scale;
    row.one_detach_ms = static_cast<double>(u2 - u1) / 1e6 * scale;
    row.one_sc_per_attach = static_cast<double>(o1.sync_core_rounds - o0.sync_core_rounds) /
                            static_cast<double>(sample);
    row.one_gp_per_detach =
        static_cast<double>(o2.grace_periods - o1.grace_periods) / static_cast<double>(sample);

    std::span<const hotprobe::ProbeSpec> batch(specs.data(), static_cast<std::size_t>(n));
    std::vector<double> attach_ms, detach_ms, attach_cpu, detach_cpu;
    for (int rep = 0; rep < o.attach_reps; ++rep) {
      hotprobe::Stats s0 = e.stats();
      std::uint64_t c0 = process_cpu_ns();
      std::uint64_t t0 = now_ns();
      auto results = e.attach(batch);
      std::uint64_t t1 = now_ns();
      std::uint64_t c1 = process_cpu_ns();
      hotprobe::Stats s1 = e.stats();
      std::vector<hotprobe::Handle> handles;
      handles.reserve(static_cast<std::size_t>(n));
      long failed = 0;
      for (auto& r : results) {
        if (!r) {
          if (failed++ == 0) row.first_error = r.error().message();
          continue;
        }
        handles.insert(handles.end(), r->begin(), r->end());
      }
      row.failed = std::max(row.failed, failed);
      row.sites_jmp = s1.sites_jmp - s0.sites_jmp;
      row.sites_int3 = s1.sites_int3 - s0.sites_int3;
      std::uint64_t c2 = process_cpu_ns();
      std::uint64_t t2 = now_ns();
      auto detached = e.detach(handles);
      std::uint64_t t3 = now_ns();
      std::uint64_t c3 = process_cpu_ns();
      hotprobe::Stats s2 = e.stats();
      if (!detached && row.first_error.empty())
        row.first_error = "detach: " + detached.error().message();
      attach_ms.push_back(static_cast<double>(t1 - t0) / 1e6);
      detach_ms.push_back(static_cast<double>(t3 - t2) / 1e6);
      attach_cpu.push_back(static_cast<double>(c1 - c0) / 1e6);
      detach_cpu.push_back(static_cast<double>(c3 - c2) / 1e6);
      row.gp_attach = std::max(row.gp_attach, s1.grace_periods - s0.grace_periods);
      row.sc_attach = std::max(row.sc_attach, s1.sync_core_rounds - s0.sync_core_rounds);
      row.gp_detach = std::max(row.gp_detach, s2.grace_periods - s1.grace_periods);
      row.sc_detach = std::max(row.sc_detach, s2.sync_core_rounds - s1.sync_core_rounds);
    }
    row.attach_ms = summarize(attach_ms);
    if (!attach_ms.empty()) row.first_attach_ms = attach_ms.front();
    row.detach_ms = summarize(detach_ms);
    row.attach_cpu_ms = summarize(attach_cpu);
    row.detach_cpu_ms = summarize(detach_cpu);
    row.maps_lines = count_maps_lines();

    report.attach.push_back(row);
    std::fprintf(stderr, "  attach/detach %ld done\n", n);
  }
}
#endif

void section_kernel_attach(Report& report, const Options& o, const GenLib& lib,
                           const hpbench::UprobePmu& pmu) {
  // Closing a perf-event uprobe waits for the kernel's grace periods (about 78 ms here,
  // serialized even across threads), so open and close a sample and extrapolate.
  std::vector<hpbench::FileLocation> locs;
  long sample = std::min<long>(o.kernel_cap, lib.count);
  for (long i = 0; i < sample; ++i)
    locs.push_back(
        hpbench::file_location_of(dlsym(lib.handle, ("hp_gen_f" + std::to_string(i)).c_str())));
  std::vector<hpbench::KernelUprobe> probes;
  std::string error;
  std::uint64_t t0 = now_ns();
  for (const auto& loc : locs) {
    probes.push_back(hpbench::KernelUprobe::open(pmu, loc.path, loc.offset, false));
    if (!probes.back().ok()) {
      error = probes.back().error();
      break;
    }
  }
  std::uint64_t t1 = now_ns();
  for (auto& p : probes)
    p.close();
  std::uint64_t t2 = now_ns();
  for (long n : {100L, 1000L}) {
    KernelAttachRow row;
    row.n = n;
    if (!error.empty()) {
      row.skipped = error;
    } else {
      row.sample = sample;
      row.open_each_us = static_cast<double>(t1 - t0) / 1e3 / static_cast<double>(sample);
      row.close_each_ms = static_cast<double>(t2 - t1) / 1e6 / static_cast<double>(sample);
      row.open_ms = row.open_each_us * static_cast<double>(n) / 1e3;
      row.close_ms = row.close_each_ms * static_cast<double>(n);
    }
    report.kattach.push_back(row);
  }
}

// ---------------------------------------------------------------------------------------
// Acceptance

void add_acceptance(Report& r, std::string what, std::string target, std::string measured,
                    int met) {
  r.acceptance.push_back({std::move(what), std::move(target), std::move(measured), met});
}

void compute_acceptance(Report& r) {
  const CallRow* entry = find_row(r, "entry empty");
  const CallRow* ret = find_row(r, "return empty");
  const CallRow* kernel = find_row(r, "kernel uprobe");
  add_acceptance(r, "entry probe added cost", "<= 5 ns",
                 entry ? fmt(entry->added.median, 2) + " ns (median)" : "-",
                 entry ? entry->added.median <= 5.0 : -1);
  add_acceptance(r, "return probe added cost", "<= 15 ns",
                 ret ? fmt(ret->added.median, 2) + " ns (median)" : "-",
                 ret ? ret->added.median <= 15.0 : -1);
  if (entry && kernel) {
    double ratio = kernel->ns.median / entry->ns.median;
    add_acceptance(r, "kernel uprobe / hotprobe entry, ns per call", ">= 100x", fmt(ratio, 0) + "x",
                   ratio >= 100);
  } else {
    add_acceptance(r, "kernel uprobe / hotprobe entry, ns per call", ">= 100x", "-", -1);
  }
  const SchemeRow* tt = nullptr;
  for (const auto& s : r.schemes)
    if (s.tasks_trace && s.skipped.empty()) tt = &s;
  add_acceptance(r, "tasks_trace 2-thread / 1-thread throughput (CPU)", ">= 1.9x",
                 tt ? fmt(tt->ratio, 2) + "x (wall " + fmt(tt->wall_ratio, 2) + "x)" : "-",
                 tt ? tt->ratio >= 1.9 : -1);
  const AttachRow* a10k = nullptr;
  for (const auto& a : r.attach)
    if (a.n == 10000 && a.skipped.empty()) a10k = &a;
  add_acceptance(
      r, "batched attach of 10,000", "< 10 ms",
      a10k ? fmt(a10k->attach_ms.median, 2) + " ms (cpu " + fmt(a10k->attach_cpu_ms.median, 1) + ")"
           : "-",
      a10k ? a10k->attach_ms.median < 10.0 : -1);
  add_acceptance(
      r, "batched detach of 10,000", "< 10 ms",
      a10k ? fmt(a10k->detach_ms.median, 2) + " ms (cpu " + fmt(a10k->detach_cpu_ms.median, 1) + ")"
           : "-",
      a10k ? a10k->detach_ms.median < 10.0 : -1);
  if (a10k) {
    double ratio = a10k->one_detach_ms / a10k->detach_ms.median;
    add_acceptance(r, "detach 10,000: one at a time / batched", ">= 20x", fmt(ratio, 0) + "x",
                   ratio >= 20);
  } else {
    add_acceptance(r, "detach 10,000: one at a time / batched", ">= 20x", "-", -1);
  }
  std::uint64_t sc = 0, gp = 0;
  bool any = false;
  for (const auto& a : r.attach) {
    if (!a.skipped.empty()) continue;
    any = true;
    sc = std::max({sc, a.sc_attach, a.sc_detach});
    gp = std::max({gp, a.gp_attach, a.gp_detach});
  }
  add_acceptance(r, "sync-core rounds per batch and direction (max)", "<= 3",
                 any ? std::to_string(sc) : "-", any ? sc <= 3 : -1);
  add_acceptance(r, "grace periods per batch (max)", "<= 2", any ? std::to_string(gp) : "-",
                 any ? gp <= 2 : -1);
}

// ---------------------------------------------------------------------------------------
// Output

void print_report(const Report& r, FILE* out) {
  const Machine& m = r.machine;
  std::fprintf(out, "probe_bench  %s%s\n", m.date.c_str(), r.options.quick ? "  (--quick)" : "");
  std::fprintf(out, "machine: %s, nproc %u, %s\n", m.cpu_model.c_str(), m.nproc, m.kernel.c_str());
  std::fprintf(out, "loadavg: start %s | end %s\n", m.loadavg_start.c_str(), m.loadavg_end.c_str());
  std::fprintf(out, "target:  hp_probe_target, %s; bytes %s\n", m.target_first_insn.c_str(),
               m.target_bytes.c_str());
  if (!r.engine_note.empty()) std::fprintf(out, "engine:  %s\n", r.engine_note.c_str());

  if (!r.calls.empty()) {
    std::fprintf(out,
                 "\n1. ns per call, thread CPU time (%d reps: min, median; 'added' = median over "
                 "reps of probed - "
                 "unprobed twin, measured alternately; 'wall' = median by the wall clock)\n",
                 r.options.reps);
    std::fprintf(out, "%-20s %9s %9s %9s %9s %9s %9s  %s\n", "row", "min", "median", "added",
                 "twin med", "wall", "calls/rep", "check");
    for (const auto& row : r.calls) {
      if (!row.skipped.empty()) {
        std::fprintf(out, "%-20s %9s  skipped: %s\n", row.name.c_str(), "", row.skipped.c_str());
        continue;
      }
      std::fprintf(out, "%-20s %9s %9s %9s %9s %9s %9ld  %s\n", row.name.c_str(),
                   fmt(row.ns.min, 2).c_str(), fmt(row.ns.median, 2).c_str(),
                   fmt(row.added.median, 2).c_str(), fmt(row.twin.median, 2).c_str(),
                   fmt(row.wall.median, 2).c_str(), row.calls, row.check.c_str());
    }
    const CallRow* entry = find_row(r, "entry empty");
    const CallRow* entry_nv = find_row(r, "entry empty novec");
    const CallRow* ret = find_row(r, "return empty");
    const CallRow* ret_nv = find_row(r, "return empty novec");
    const CallRow* k = find_row(r, "kernel uprobe");
    const CallRow* kr = find_row(r, "kernel uretprobe");
    if (entry && k)
      std::fprintf(out, "kernel uprobe / hotprobe entry:     %sx per call, %sx added\n",
                   fmt(k->ns.median / entry->ns.median, 0).c_str(),
                   fmt(k->added.median / entry->added.median, 0).c_str());
    if (ret && kr)
      std::fprintf(out, "kernel uretprobe / hotprobe return: %sx per call, %sx added\n",
                   fmt(kr->ns.median / ret->ns.median, 0).c_str(),
                   fmt(kr->added.median / ret->added.median, 0).c_str());
    if (entry && entry_nv)
      std::fprintf(out, "vector_registers=true (default) costs %s ns per entry hit over false\n",
                   fmt(entry->added.median - entry_nv->added.median, 2).c_str());
    if (ret && ret_nv)
      std::fprintf(out, "vector_registers=true (default) costs %s ns per return hit over false\n",
                   fmt(ret->added.median - ret_nv->added.median, 2).c_str());
  }

  if (!r.schemes.empty()) {
    std::fprintf(out,
                 "\n2. entry probe (counting handler) per scheme, 1 and 2 threads pinned to CPUs "
                 "0,1; ns per call "
                 "per thread by CPU time, median [min]; Mcalls/s total by CPU time, 2T/1T their "
                 "ratio; 'wall' = the "
                 "same ratio by the wall clock\n");
    std::fprintf(out, "%-13s %16s %16s %11s %11s %7s %7s  %s\n", "scheme", "ns/call 1T",
                 "ns/call/thr 2T", "Mcalls/s 1T", "Mcalls/s 2T", "2T/1T", "wall", "check");
    for (const auto& s : r.schemes) {
      if (!s.skipped.empty()) {
        std::fprintf(out, "%-13s  skipped: %s\n", s.scheme.c_str(), s.skipped.c_str());
        continue;
      }
      std::string n1 = fmt(s.ns1.median, 2) + " [" + fmt(s.ns1.min, 2) + "]";
      std::string n2 = fmt(s.ns2.median, 2) + " [" + fmt(s.ns2.min, 2) + "]";
      std::fprintf(out, "%-13s %16s %16s %11s %11s %7s %7s  %s\n", s.scheme.c_str(), n1.c_str(),
                   n2.c_str(), fmt(s.cthr1.median, 1).c_str(), fmt(s.cthr2.median, 1).c_str(),
                   (fmt(s.ratio, 2) + "x").c_str(), (fmt(s.wall_ratio, 2) + "x").c_str(),
                   s.check.c_str());
    }
  }

  if (!r.attach.empty()) {
    std::fprintf(out,
                 "\n3. attach/detach on the generated library, batched (attach(span)/detach(span), "
                 "%d rep(s), "
                 "median) vs one at a time (attach(spec)/detach(handle) loop; '*' = extrapolated "
                 "from a sample)\n",
                 r.options.attach_reps);
    std::fprintf(out, "%7s %10s %10s %10s %8s %8s %6s %6s %12s %12s %8s %8s %8s  %s\n", "probes",
                 "attach ms", "1st att ms", "detach ms", "att cpu", "det cpu", "GP a/d", "SC a/d",
                 "1by1 att ms", "1by1 det ms", "sample", "SC/att", "GP/det", "sites, errors");
    for (const auto& a : r.attach) {
      if (!a.skipped.empty()) {
        std::fprintf(out, "%7ld  skipped: %s\n", a.n, a.skipped.c_str());
        continue;
      }
      std::string star = a.one_sample < a.n ? "*" : "";
      std::string gp = std::to_string(a.gp_attach) + "/" + std::to_string(a.gp_detach);
      std::string sc = std::to_string(a.sc_attach) + "/" + std::to_string(a.sc_detach);
      std::string sites = std::to_string(a.sites_jmp) + " jmp " + std::to_string(a.sites_int3) +
                          " int3, " + std::to_string(a.maps_lines) + " maps";
      if (a.failed)
        sites += ", " + std::to_string(a.failed) + " failed: " + a.first_error;
      else if (!a.first_error.empty())
        sites += ", " + a.first_error;
      std::fprintf(out, "%7ld %10s %10s %10s %8s %8s %6s %6s %12s %12s %8ld %8s %8s  %s\n", a.n,
                   fmt(a.attach_ms.median, 2).c_str(), fmt(a.first_attach_ms, 2).c_str(),
                   fmt(a.detach_ms.median, 2).c_str(), fmt(a.attach_cpu_ms.median, 1).c_str(),
                   fmt(a.detach_cpu_ms.median, 1).c_str(), gp.c_str(), sc.c_str(),
                   (fmt(a.one_attach_ms, 1) + star).c_str(),
                   (fmt(a.one_detach_ms, 1) + star).c_str(), a.one_sample,
                   fmt(a.one_sc_per_attach, 2).c_str(), fmt(a.one_gp_per_detach, 2).c_str(),
                   sites.c_str());
    }
  }

  if (!r.kattach.empty()) {
    std::fprintf(out,
                 "\n4. kernel perf-event uprobes on the same functions: open each, close each "
                 "(sample opened and closed one by one, extrapolated to n: '*')\n");
    std::fprintf(out, "%7s %12s %12s %12s %12s %8s\n", "probes", "open ms", "close ms",
                 "open us/ea", "close ms/ea", "sample");
    for (const auto& k : r.kattach) {
      if (!k.skipped.empty()) {
        std::fprintf(out, "%7ld  skipped: %s\n", k.n, k.skipped.c_str());
        continue;
      }
      std::string star = k.sample < k.n ? "*" : "";
      std::fprintf(out, "%7ld %12s %12s %12s %12s %8ld\n", k.n, (fmt(k.open_ms, 1) + star).c_str(),
                   (fmt(k.close_ms, 0) + star).c_str(), fmt(k.open_each_us, 1).c_str(),
                   fmt(k.close_each_ms, 1).c_str(), k.sample);
    }
  }

  std::fprintf(out, "\nbudgets (docs/design.md)\n");
  for (const auto& a : r.acceptance) {
    const char* verdict = a.met == 1 ? "met" : a.met == 0 ? "NOT MET" : "not measured";
    std::fprintf(out, "  %-48s %-9s %-22s %s\n", a.what.c_str(), a.target.c_str(),
                 a.measured.c_str(), verdict);
  }
  for (const auto& n : r.notes)
    std::fprintf(out, "note: %s\n", n.c_str());
}

std::string jstr(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      o += buf;
    } else {
      o += c;
    }
  }
  return o + "\"";
}

std::string jnum(double v) {
  if (std::isnan(v) || std::isinf(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::string jsum(const Summary& s) {
  return "{\"min\":" + jnum(s.min) + ",\"median\":" + jnum(s.median) + "}";
}

bool write_json(const Report& r, const std::string& path) {
  std::string j = "{\n";
  const Machine& m = r.machine;
  j += "\"machine\":{\"cpu_model\":" + jstr(m.cpu_model) + ",\"nproc\":" + std::to_string(m.nproc) +
       ",\"kernel\":" + jstr(m.kernel) + ",\"date\":" + jstr(m.date) +
       ",\"loadavg_start\":" + jstr(m.loadavg_start) + ",\"loadavg_end\":" + jstr(m.loadavg_end) +
       "},\n";
  j += "\"target\":{\"function\":\"hp_probe_target\",\"bytes\":" + jstr(m.target_bytes) +
       ",\"first_instruction\":" + jstr(m.target_first_insn) + "},\n";
  j += "\"options\":{\"quick\":" + std::string(r.options.quick ? "true" : "false") +
       ",\"reps\":" + std::to_string(r.options.reps) +
       ",\"calls\":" + std::to_string(r.options.calls) +
       ",\"slow_calls\":" + std::to_string(r.options.slow_calls) +
       ",\"attach_reps\":" + std::to_string(r.options.attach_reps) +
       ",\"one_cap\":" + std::to_string(r.options.one_cap) +
       ",\"kernel_cap\":" + std::to_string(r.options.kernel_cap) + "},\n";
  j += "\"engine_note\":" + jstr(r.engine_note) + ",\n";
  j += "\"calls\":[";
  for (std::size_t i = 0; i < r.calls.size(); ++i) {
    const CallRow& c = r.calls[i];
    j += std::string(i ? ",\n " : "\n ") + "{\"row\":" + jstr(c.name) + ",\"what\":" + jstr(c.what);
    if (!c.skipped.empty()) {
      j += ",\"skipped\":" + jstr(c.skipped) + "}";
      continue;
    }
    j += ",\"ns_per_call\":" + jsum(c.ns) + ",\"wall_ns_per_call\":" + jsum(c.wall) +
         ",\"twin_ns_per_call\":" + jsum(c.twin) + ",\"added_ns\":" + jsum(c.added) +
         ",\"calls_per_rep\":" + std::to_string(c.calls) + ",\"check\":" + jstr(c.check) + "}";
  }
  j += "],\n\"schemes\":[";
  for (std::size_t i = 0; i < r.schemes.size(); ++i) {
    const SchemeRow& s = r.schemes[i];
    j += std::string(i ? ",\n " : "\n ") + "{\"scheme\":" + jstr(s.scheme);
    if (!s.skipped.empty()) {
      j += ",\"skipped\":" + jstr(s.skipped) + "}";
      continue;
    }
    j += ",\"ns_per_call_1t\":" + jsum(s.ns1) + ",\"ns_per_call_per_thread_2t\":" + jsum(s.ns2) +
         ",\"cpu_mcalls_per_s_1t\":" + jsum(s.cthr1) + ",\"cpu_mcalls_per_s_2t\":" + jsum(s.cthr2) +
         ",\"wall_mcalls_per_s_1t\":" + jsum(s.thr1) + ",\"wall_mcalls_per_s_2t\":" + jsum(s.thr2) +
         ",\"throughput_2t_over_1t\":" + jnum(s.ratio) +
         ",\"wall_throughput_2t_over_1t\":" + jnum(s.wall_ratio) + ",\"check\":" + jstr(s.check) +
         "}";
  }
  j += "],\n\"attach\":[";
  for (std::size_t i = 0; i < r.attach.size(); ++i) {
    const AttachRow& a = r.attach[i];
    j += std::string(i ? ",\n " : "\n ") + "{\"probes\":" + std::to_string(a.n);
    if (!a.skipped.empty()) {
      j += ",\"skipped\":" + jstr(a.skipped) + "}";
      continue;
    }
    j += ",\"batched_attach_ms\":" + jsum(a.attach_ms) +
         ",\"first_batched_attach_ms\":" + jnum(a.first_attach_ms) +
         ",\"batched_detach_ms\":" + jsum(a.detach_ms) +
         ",\"batched_attach_cpu_ms\":" + jsum(a.attach_cpu_ms) +
         ",\"batched_detach_cpu_ms\":" + jsum(a.detach_cpu_ms) +
         ",\"grace_periods_attach\":" + std::to_string(a.gp_attach) +
         ",\"sync_core_attach\":" + std::to_string(a.sc_attach) +
         ",\"grace_periods_detach\":" + std::to_string(a.gp_detach) +
         ",\"sync_core_detach\":" + std::to_string(a.sc_detach) +
         ",\"sites_jmp\":" + std::to_string(a.sites_jmp) +
         ",\"sites_int3\":" + std::to_string(a.sites_int3) +
         ",\"failed\":" + std::to_string(a.failed) + ",\"first_error\":" + jstr(a.first_error) +
         ",\"maps_lines_after\":" + std::to_string(a.maps_lines) +
         ",\"one_at_a_time_sample\":" + std::to_string(a.one_sample) +
         ",\"one_at_a_time_extrapolated\":" + (a.one_sample < a.n ? "true" : "false") +
         ",\"one_at_a_time_attach_ms\":" + jnum(a.one_attach_ms) +
         ",\"one_at_a_time_detach_ms\":" + jnum(a.one_detach_ms) +
         ",\"one_at_a_time_sync_core_per_attach\":" + jnum(a.one_sc_per_attach) +
         ",\"one_at_a_time_grace_periods_per_detach\":" + jnum(a.one_gp_per_detach) + "}";
  }
  j += "],\n\"kernel_attach\":[";
  for (std::size_t i = 0; i < r.kattach.size(); ++i) {
    const KernelAttachRow& k = r.kattach[i];
    j += std::string(i ? ",\n " : "\n ") + "{\"probes\":" + std::to_string(k.n);
    if (!k.skipped.empty()) {
      j += ",\"skipped\":" + jstr(k.skipped) + "}";
      continue;
    }
    j += ",\"sample\":" + std::to_string(k.sample) +
         ",\"extrapolated\":" + (k.sample < k.n ? "true" : "false") +
         ",\"open_ms\":" + jnum(k.open_ms) + ",\"close_ms\":" + jnum(k.close_ms) +
         ",\"open_us_each\":" + jnum(k.open_each_us) +
         ",\"close_ms_each\":" + jnum(k.close_each_ms) + "}";
  }
  j += "],\n\"acceptance\":[";
  for (std::size_t i = 0; i < r.acceptance.size(); ++i) {
    const Acceptance& a = r.acceptance[i];
    j += std::string(i ? ",\n " : "\n ") + "{\"what\":" + jstr(a.what) +
         ",\"target\":" + jstr(a.target) + ",\"measured\":" + jstr(a.measured) + ",\"met\":" +
         (a.met == 1   ? "true"
          : a.met == 0 ? "false"
                       : "null") +
         "}";
  }
  j += "],\n\"notes\":[";
  for (std::size_t i = 0; i < r.notes.size(); ++i)
    j += std::string(i ? "," : "") + jstr(r.notes[i]);
  j += "]\n}\n";
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) return false;
  bool ok = std::fwrite(j.data(), 1, j.size(), f) == j.size();
  return std::fclose(f) == 0 && ok;
}

}  // namespace

int main(int argc, char** argv) {
  Report report;
  if (!parse_options(argc, argv, &report.options)) return 2;
  const Options& o = report.options;
  report.machine = describe_machine();
#if HP_PROBE_BENCH_HAVE_ENGINE
  report.engine_note = "";
#else
  report.engine_note =
      "built without the hotprobe engine (src/core had no Engine when configured): hotprobe rows "
      "skipped";
#endif
  hpbench::UprobePmu pmu = hpbench::find_uprobe_pmu();
  if (!pmu.ok()) report.notes.push_back("kernel uprobes: " + pmu.error);

  if (o.want("calls")) {
    std::fprintf(stderr, "probe_bench: calls\n");
    section_calls(report, o, pmu);
  }
  if (o.want("schemes")) {
    std::fprintf(stderr, "probe_bench: schemes\n");
    section_schemes(report, o);
  }
  if (o.want("attach") || o.want("kattach")) {
    GenLib lib = open_gen_lib(o);
    if (!lib.error.empty()) {
      report.notes.push_back("attach: " + lib.error);
    } else {
#if HP_PROBE_BENCH_HAVE_ENGINE
      if (o.want("attach")) {
        std::fprintf(stderr, "probe_bench: attach (%ld functions in %s)\n", lib.count,
                     lib.path.c_str());
        section_attach(report, o, lib);
      }
#else
      if (o.want("attach")) report.notes.push_back("attach: " + report.engine_note);
#endif
      if (o.want("kattach")) {
        if (!o.kernel) {
          report.notes.push_back("kattach: --no-kernel");
        } else if (!pmu.ok()) {
          report.notes.push_back("kattach: " + pmu.error);
        } else {
          std::fprintf(stderr, "probe_bench: kernel attach\n");
          section_kernel_attach(report, o, lib, pmu);
        }
      }
    }
  }
  report.machine.loadavg_end = read_line("/proc/loadavg");
  compute_acceptance(report);
  print_report(report, stdout);
  if (!o.json_path.empty()) {
    if (!write_json(report, o.json_path)) {
      std::fprintf(stderr, "probe_bench: cannot write %s\n", o.json_path.c_str());
      return 1;
    }
    std::printf("json: %s\n", o.json_path.c_str());
  }
  return 0;
}
