// sync_bench: every read-side protection scheme of src/sync side by side in one run, against
// liburcu (memb, mb, qsbr, bp in the same process) and the std baselines. It measures
//  - ns per read-side lock+unlock pair around a pointer load, with 1 and 2 reader threads,
//    and the reader throughput scaling from 1 to 2 threads;
//  - synchronize() latency, alone and with 2 busy readers;
//  - the percpu-rwsem write lock+unlock, alone and with 2 busy readers;
// and checks its acceptance ratios. docs/benchmarks.md explains every row.
//
// A hand-written harness rather than Google Benchmark, because we need (a) one repetition of
// every flavour after another, round-robin, so that the noise of this shared VM hits every
// flavour alike, (b) writers timed while reader threads of the same domain keep running, (c)
// ratios between rows computed and checked in the same run, and (d) one JSON file with the
// machine description. Every read-side flavour runs the same templated loop (below,
// read_block), so the domains are inlined and the loop overhead is identical for all rows;
// the "none" row measures that overhead alone.

#include <linux/membarrier.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <shared_mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "base/compiler.h"
#include "sync/domain.h"
#include "sync/schemes.h"

#include "urcu_flavors.h"  // last: liburcu defines a few generic macros

namespace hp::bench {
namespace {

using Clock = std::chrono::steady_clock;  // clock_gettime(CLOCK_MONOTONIC)

// Reads per block: the stop flag is checked, and qsbr announces a quiescent state, once per
// block, for every flavour alike.
constexpr int kBlock = 1024;
#ifdef NDEBUG
constexpr const char* kNdebug = "true";
#else
constexpr const char* kNdebug = "false";
#endif

std::uint64_t clock_ns(clockid_t clock) {
  timespec ts;
  clock_gettime(clock, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000u + ts.tv_nsec;
}
std::uint64_t now_ns() {
  return clock_ns(CLOCK_MONOTONIC);
}
// CPU time of the calling thread: leaves out the time this shared VM gave to other work.
std::uint64_t thread_cpu_ns() {
  return clock_ns(CLOCK_THREAD_CPUTIME_ID);
}

// Keeps v live (Google Benchmark's DoNotOptimize for a register value), without a memory
// clobber, so it adds no reloads of its own.
template <class T>
HP_ALWAYS_INLINE void keep(const T& v) {
  asm volatile("" : : "r"(v));
}

// ---------------------------------------------------------------------------------------
// The object readers look at: a published pointer and a field behind it.

struct alignas(kCacheLine) Node {
  std::uint64_t value = 42;
};
alignas(kCacheLine) std::atomic<Node*> g_published{nullptr};

// ---------------------------------------------------------------------------------------
// Adapters: every flavour has lock() -> Token, unlock(Token), quiescent(), thread_online(),
// thread_offline(), synchronize().

// Any hp::sync::ReadDomain, used inline through its own type.
template <hp::sync::ReadDomain D>
struct HpFlavor {
  using Token = hp::sync::ReadToken;
  D* d;
  HP_ALWAYS_INLINE Token lock() noexcept { return d->read_lock(); }
  HP_ALWAYS_INLINE void unlock(Token t) noexcept { d->read_unlock(t); }
  void quiescent() noexcept {}
  void thread_online() {}
  void thread_offline() {}
  void synchronize() { d->synchronize(); }
};

// The domain of a scheme under test, for the whole run (tasks-trace's is the process's).
template <class D>
D& scheme_domain() {
  if constexpr (std::is_same_v<D, hp::sync::TasksTrace>) {
    return hp::sync::tasks_trace();
  } else {
    static D d;
    return d;
  }
}

// No protection: the loop overhead (pointer load, field load, loop control) alone.
struct NoneFlavor {
  struct Token {};
  HP_ALWAYS_INLINE Token lock() noexcept {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    return {};
  }
  HP_ALWAYS_INLINE void unlock(Token) noexcept {
    std::atomic_signal_fence(std::memory_order_seq_cst);
  }
  void quiescent() noexcept {}
  void thread_online() {}
  void thread_offline() {}
};

// std::shared_mutex read side: the tree lock the uprobes work replaced.
struct StdSharedMutexFlavor {
  struct Token {};
  std::shared_mutex* m;
  HP_ALWAYS_INLINE Token lock() noexcept {
    m->lock_shared();
    return {};
  }
  HP_ALWAYS_INLINE void unlock(Token) noexcept { m->unlock_shared(); }
  void quiescent() noexcept {}
  void thread_online() {}
  void thread_offline() {}
  void synchronize() {
    m->lock();
    m->unlock();
  }
};

// One shared atomic count, as a refcount on the probe would be.
struct AtomicRefFlavor {
  struct Token {};
  std::atomic<long>* count;
  HP_ALWAYS_INLINE Token lock() noexcept {
    count->fetch_add(1, std::memory_order_acquire);
    return {};
  }
  HP_ALWAYS_INLINE void unlock(Token) noexcept { count->fetch_sub(1, std::memory_order_release); }
  void quiescent() noexcept {}
  void thread_online() {}
  void thread_offline() {}
};

// The bench's own trivial ReadDomain, a minimal tasks-trace: a per-thread sequence that is
// odd inside a section (only the outermost level touches it), compiler barriers only on the
// read side; the writer runs membarrier(PRIVATE_EXPEDITED), which makes every running thread
// execute a full barrier (the reader's missing smp_mb; pairs with the reader's
// store-then-load), then waits until each thread's sequence is even or has moved on. It
// tests the harness before the real domains land and stays as a lower-bound reference.
// Slots are never freed (a bench-sized pool), and a thread exiting leaves its slot even.
class TrivialDomain {
 public:
  TrivialDomain() {
    membarrier_ok_ = syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
  }
  hp::sync::ReadToken read_lock() noexcept {
    if (t_nest_++ == 0) {
      Slot* s = HP_LIKELY(t_slot_ != nullptr) ? t_slot_ : claim();
      s->seq.store(s->seq.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }
    std::atomic_signal_fence(std::memory_order_seq_cst);
    return {};
  }
  void read_unlock(hp::sync::ReadToken) noexcept {
    std::atomic_signal_fence(std::memory_order_seq_cst);
    if (--t_nest_ == 0) {
      t_slot_->seq.store(t_slot_->seq.load(std::memory_order_relaxed) + 1,
                         std::memory_order_relaxed);
    }
  }
  bool in_reader() noexcept { return t_nest_ != 0; }
  void synchronize() {
    full_barrier_everywhere();
    std::uint64_t snap[kSlots];
    int n = used_.load(std::memory_order_acquire);
    for (int i = 0; i < n; ++i)
      snap[i] = slots_[i].seq.load(std::memory_order_relaxed);
    for (int i = 0; i < n; ++i) {
      if ((snap[i] & 1) == 0) continue;
      // Spin briefly, then sleep: on an oversubscribed CPU the reader we wait for may be the
      // one this writer preempted, and sched_yield() does not reliably hand it the CPU.
      for (int spins = 0; slots_[i].seq.load(std::memory_order_relaxed) == snap[i]; ++spins) {
        if (spins > 100) {
          timespec ts{0, 1000};
          nanosleep(&ts, nullptr);
        }
      }
    }
    full_barrier_everywhere();  // readers' critical sections end before we return
  }

 private:
  static constexpr int kSlots = 1024;
  struct alignas(kCacheLine) Slot {
    std::atomic<std::uint64_t> seq{0};
  };
  void full_barrier_everywhere() {
    if (!membarrier_ok_ || syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0) {
      std::atomic_thread_fence(std::memory_order_seq_cst);  // then this is not a domain
      std::fprintf(stderr, "sync_bench: membarrier unavailable\n");
      std::abort();
    }
  }
  HP_COLD Slot* claim() {
    int i = used_.fetch_add(1, std::memory_order_acq_rel);
    if (i >= kSlots) {
      std::fprintf(stderr, "sync_bench: TrivialDomain out of thread slots\n");
      std::abort();
    }
    t_slot_ = &slots_[i];
    return t_slot_;
  }
  static inline thread_local Slot* t_slot_ = nullptr;
  static inline thread_local unsigned t_nest_ = 0;
  bool membarrier_ok_ = false;
  std::atomic<int> used_{0};
  Slot slots_[kSlots];
};
static_assert(hp::sync::ReadDomain<TrivialDomain>);

// ---------------------------------------------------------------------------------------
// The read-side loop, identical for every flavour.

template <class F>
HP_NOINLINE void read_block(F& f) {
  for (int i = 0; i < kBlock; ++i) {
    auto t = f.lock();
    Node* p = g_published.load(std::memory_order_acquire);
    std::uint64_t v = p->value;
    keep(v);
    f.unlock(t);
  }
  f.quiescent();
}

std::vector<int> allowed_cpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
    }
  }
  return cpus;
}

// Pins the calling thread to one CPU; silently does nothing where that is not allowed.
void pin_to(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  (void)pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

struct Options {
  int reps = 7;
  bool quick = false;
  int read_ms = 100;      // duration of one repetition of one read-side row
  int sync_samples = 40;  // synchronize() calls per repetition
  int gap_us = 200;       // the writer sleeps this long between two timed calls
  int sync_cap_ms = 500;  // but at most this long per repetition
  std::string json;
  std::string filter;
  bool pin = true;
};

// Reader threads that run read_block() until told to stop, each pinned to its own CPU.
template <class F>
class Readers {
 public:
  Readers(F f, int n, bool pin) : f_(f) {
    res_.resize(n);
    std::vector<int> cpus = allowed_cpus();
    for (int i = 0; i < n; ++i) {
      // From the last CPU down: a lone reader does not share CPU 0 with the main thread.
      int cpu = pin && !cpus.empty() ? cpus[cpus.size() - 1 - i % cpus.size()] : -1;
      threads_.emplace_back([this, i, cpu] { run(i, cpu); });
    }
    while (ready_.load(std::memory_order_acquire) != n)
      std::this_thread::yield();
  }
  void go() { go_.store(true, std::memory_order_release); }
  struct Result {
    std::uint64_t reads, wall_ns, cpu_ns;
  };
  // Stops and joins the readers.
  std::vector<Result> stop() {
    stop_.store(true, std::memory_order_release);
    for (auto& t : threads_)
      t.join();
    threads_.clear();
    return res_;
  }
  ~Readers() {
    if (!threads_.empty()) stop();
  }

 private:
  void run(int i, int cpu) {
    pin_to(cpu);
    F f = f_;
    f.thread_online();
    for (int w = 0; w < 64; ++w)
      read_block(f);  // warm up: TLS, caches, registration
    ready_.fetch_add(1, std::memory_order_acq_rel);
    while (!go_.load(std::memory_order_acquire)) {
      // Spinning keeps the CPU busy, as in the measurement; yield if oversubscribed.
      std::this_thread::yield();
    }
    std::uint64_t n = 0;
    std::uint64_t c0 = thread_cpu_ns();
    std::uint64_t t0 = now_ns();
    while (!stop_.load(std::memory_order_relaxed)) {
      read_block(f);
      n += kBlock;
    }
    std::uint64_t t1 = now_ns();
    std::uint64_t c1 = thread_cpu_ns();
    f.thread_offline();
    res_[i] = {n, t1 - t0, c1 - c0};
  }

  F f_;
  std::vector<std::thread> threads_;
  std::vector<Result> res_;
  alignas(kCacheLine) std::atomic<int> ready_{0};
  alignas(kCacheLine) std::atomic<bool> go_{false};
  alignas(kCacheLine) std::atomic<bool> stop_{false};
};

// Read-side results are per thread CPU time, not wall time: on this shared, noisy VM the
// wall clock also counts the time other processes held our CPU. Throughput is then the
// sum over the readers of reads per CPU-second, so 2-thread scaling shows how much readers
// slow each other down (shared cache lines, fences), not how many CPUs the VM had free.
struct ReadRep {
  double ns_per_pair = 0;  // mean over the reader threads of CPU time / reads
  double mops = 0;         // total throughput, million pairs per CPU-second of each reader
  double mops_wall = 0;    // the same per wall-clock second
  // Fraction of the wall-clock time the readers were on a CPU. Below ~0.9 with 2 readers,
  // other work kept them from running together, and their contention is underestimated.
  double on_cpu = 0;
};

template <class F>
ReadRep run_read_rep(F f, int nthreads, const Options& o) {
  Readers<F> r(f, nthreads, o.pin);
  r.go();
  std::this_thread::sleep_for(std::chrono::milliseconds(o.read_ms));
  auto res = r.stop();
  ReadRep out;
  for (auto& x : res) {
    double n = static_cast<double>(x.reads);
    out.ns_per_pair += static_cast<double>(x.cpu_ns) / n / nthreads;
    out.mops += n * 1e3 / static_cast<double>(x.cpu_ns);
    out.mops_wall += n * 1e3 / static_cast<double>(x.wall_ns);
    out.on_cpu += static_cast<double>(x.cpu_ns) / static_cast<double>(x.wall_ns) / nthreads;
  }
  return out;
}

// Times op() (a grace period or a write lock+unlock) while `readers` threads of flavour f
// stay in a tight read-side loop; appends one sample in microseconds per call.
template <class F, class Op>
void run_write_rep(F f, int readers, const Options& o, Op op, std::vector<double>& us) {
  std::unique_ptr<Readers<F>> r;
  if (readers > 0) {
    r = std::make_unique<Readers<F>>(f, readers, o.pin);
    r->go();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // readers in steady state
  }
  op();  // warm up: first-use registration, worker threads
  std::uint64_t deadline = now_ns() + static_cast<std::uint64_t>(o.sync_cap_ms) * 1000000u;
  for (int i = 0; i < o.sync_samples; ++i) {
    // The writer sleeps between calls, so that the readers own every CPU again and the next
    // call finds them at a random point, possibly inside a section (back-to-back calls would
    // keep one reader preempted wherever it stopped and flatter writers that never sleep).
    std::this_thread::sleep_for(std::chrono::microseconds(o.gap_us));
    std::uint64_t t0 = now_ns();
    op();
    std::uint64_t t1 = now_ns();
    us.push_back(static_cast<double>(t1 - t0) / 1e3);
    if (t1 > deadline) break;
  }
  if (r) r->stop();
}

// A row that makes no progress for a long time (a domain that deadlocks, a writer starved
// for good) must not hang the README's first command: say which row, and exit.
class Watchdog {
 public:
  static constexpr int kLimitS = 60;
  Watchdog() {
    std::thread([this] {
      for (;;) {
        std::this_thread::sleep_for(std::chrono::seconds(1));
        std::uint64_t since = now_ns() - last_.load(std::memory_order_acquire);
        if (since > kLimitS * 1000000000ull) {
          std::fprintf(stderr, "sync_bench: no progress for %d s in row %s\n", kLimitS,
                       what_.load(std::memory_order_acquire));
          std::_Exit(3);
        }
      }
    }).detach();
  }
  void enter(const std::string& row, const char* op, int threads) {
    std::snprintf(buf_[flip_], sizeof buf_[flip_], "%s, %s, %d threads", row.c_str(), op, threads);
    what_.store(buf_[flip_], std::memory_order_release);
    flip_ ^= 1;
    last_.store(now_ns(), std::memory_order_release);
  }

 private:
  char buf_[2][160] = {"(start)", "(start)"};
  int flip_ = 0;
  std::atomic<const char*> what_{buf_[0]};
  std::atomic<std::uint64_t> last_{now_ns()};
};

// ---------------------------------------------------------------------------------------
// Rows and results.

struct Stats {
  double min = NAN, median = NAN, p90 = NAN, max = NAN;
  int n = 0;
};
Stats stats_of(std::vector<double> v) {
  Stats s;
  s.n = static_cast<int>(v.size());
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.min = v.front();
  s.max = v.back();
  s.median = v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  s.p90 = v[std::min(v.size() - 1, static_cast<size_t>(std::ceil(0.9 * v.size())) - 1)];
  return s;
}

struct ReadRow {
  std::string name, group;
  std::function<ReadRep(int nthreads)> run;
  std::vector<double> ns[2], mops[2], mops_wall[2], on_cpu[2];  // index: threads - 1
};

struct WriteRow {
  std::string name, group, what;
  std::function<void(int readers, std::vector<double>& us)> run;
  std::vector<double> us[3];  // index: number of busy readers (0, 1, 2)
};

struct Bench {
  Options o;
  std::vector<ReadRow> reads;
  std::vector<WriteRow> writes;

  bool selected(const std::string& name) const {
    return o.filter.empty() || name.find(o.filter) != std::string::npos || name == "none" ||
           name == "urcu-memb";
  }

  template <class F>
  void add_read(std::string name, std::string group, F f) {
    if (!selected(name)) return;
    reads.push_back(
        {name, group, [f, this](int n) { return run_read_rep(f, n, o); }, {}, {}, {}, {}});
  }
  template <class F>
  void add_sync(std::string name, std::string group, F f) {
    if (!selected(name)) return;
    writes.push_back({name,
                      group,
                      "synchronize()",
                      [f, this](int readers, std::vector<double>& us) {
                        F w = f;
                        run_write_rep(
                            f, readers, o, [&w] { w.synchronize(); }, us);
                      },
                      {}});
  }
};

// ---------------------------------------------------------------------------------------
// Machine description.

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto p = line.find(':');
      if (p != std::string::npos) return line.substr(line.find_first_not_of(" \t", p + 1));
    }
  }
  return "unknown";
}

struct Machine {
  std::string cpu, kernel, date, compiler;
  int nproc = 0, online = 0;
};

Machine machine() {
  Machine m;
  m.cpu = cpu_model();
  utsname u;
  if (uname(&u) == 0) m.kernel = std::string(u.sysname) + " " + u.release + " " + u.machine;
  m.nproc = static_cast<int>(allowed_cpus().size());
  m.online = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  char buf[64];
  std::time_t t = std::time(nullptr);
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  m.date = buf;
  m.compiler = "g++ " __VERSION__;
  return m;
}

// ---------------------------------------------------------------------------------------
// Acceptance ratios.

struct Check {
  std::string what;
  double ratio = NAN;      // from the medians: decides "met"
  double ratio_min = NAN;  // the same ratio from the minimums (best cases), for context
  std::string op;          // "<=" or ">="
  double bound = NAN;
  bool met = false;
  bool known = false;
};

Check check(std::string what, double ratio, double ratio_min, const char* op, double bound) {
  Check c{std::move(what), ratio, ratio_min, op, bound, false, !std::isnan(ratio)};
  if (c.known) c.met = std::string(op) == "<=" ? ratio <= bound : ratio >= bound;
  return c;
}

void usage() {
  std::printf(
      "usage: sync_bench [--quick] [--reps N] [--json FILE] [--filter SUBSTR] [--no-pin]\n"
      "\n"
      "Every read-side protection scheme of src/sync side by side with liburcu (memb, mb,\n"
      "qsbr, bp) and std baselines, in one run. Prints a table; see docs/benchmarks.md.\n"
      "\n"
      "  --quick          short run (3 repetitions, short durations; well under a minute)\n"
      "  --reps N         repetitions of every row, round-robin (default 7; quick: 3)\n"
      "  --read-ms MS     duration of one read-side repetition (default 100; quick: 25)\n"
      "  --sync-samples N synchronize() calls per repetition (default 40; quick: 15)\n"
      "  --gap-us US      the writer sleeps this long between timed calls (default 200)\n"
      "  --json FILE      also write the results, ratios and machine as JSON\n"
      "  --filter SUBSTR  only rows whose name contains SUBSTR (plus none and urcu-memb)\n"
      "  --no-pin         do not pin reader threads to CPUs\n"
      "  --help           this text\n");
}

bool parse(int argc, char** argv, Options& o) {
  int reps = -1, read_ms = -1, samples = -1;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* what) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "sync_bench: %s needs a value\n", what);
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      usage();
      std::exit(0);
    } else if (a == "--quick") {
      o.quick = true;
    } else if (a == "--reps") {
      reps = std::atoi(value("--reps"));
    } else if (a == "--read-ms") {
      read_ms = std::atoi(value("--read-ms"));
    } else if (a == "--sync-samples") {
      samples = std::atoi(value("--sync-samples"));
    } else if (a == "--gap-us") {
      o.gap_us = std::atoi(value("--gap-us"));
    } else if (a == "--json") {
      o.json = value("--json");
    } else if (a == "--filter") {
      o.filter = value("--filter");
    } else if (a == "--no-pin") {
      o.pin = false;
    } else {
      std::fprintf(stderr, "sync_bench: unknown argument '%s' (try --help)\n", a.c_str());
      return false;
    }
  }
  if (o.quick) {
    o.reps = 3;
    o.read_ms = 25;
    o.sync_samples = 15;
    o.sync_cap_ms = 400;
  }
  if (reps != -1) o.reps = reps;
  if (read_ms != -1) o.read_ms = read_ms;
  if (samples != -1) o.sync_samples = samples;
  if (o.reps < 1 || o.read_ms < 1 || o.sync_samples < 1 || o.gap_us < 0) {
    std::fprintf(stderr, "sync_bench: --reps, --read-ms and --sync-samples must be >= 1\n");
    return false;
  }
  return true;
}

std::string fmt(double v, const char* f = "%.2f") {
  if (std::isnan(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// JSON numbers: NaN becomes null.
std::string jnum(double v) {
  if (std::isnan(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::string jstr(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    out += c;
  }
  return out + "\"";
}

std::string jstats(const Stats& s) {
  return "{\"min\": " + jnum(s.min) + ", \"median\": " + jnum(s.median) +
         ", \"p90\": " + jnum(s.p90) + ", \"max\": " + jnum(s.max) +
         ", \"n\": " + std::to_string(s.n) + "}";
}

}  // namespace
}  // namespace hp::bench

int main(int argc, char** argv) {
  using namespace hp::bench;
  Bench b;
  if (!parse(argc, argv, b.o)) return 2;
  const Options& o = b.o;

  static Node node;
  g_published.store(&node, std::memory_order_release);

  // The domains under test live for the whole run.
  static TrivialDomain trivial;
  static std::shared_mutex smutex;
  static std::atomic<long> refcount{0};

  b.add_read("none", "reference", NoneFlavor{});
  b.add_read("bench-trivial", "reference", HpFlavor<TrivialDomain>{&trivial});
  hp::sync::for_each_scheme([&](auto s) {
    using Traits = hp::sync::SchemeTraits<decltype(s)::value>;
    b.add_read(std::string(Traits::name), "hotprobe",
               HpFlavor<typename Traits::Domain>{&scheme_domain<typename Traits::Domain>()});
  });
  b.add_read("urcu-memb", "liburcu", UrcuMemb{});
  b.add_read("urcu-mb", "liburcu", UrcuMb{});
  b.add_read("urcu-qsbr", "liburcu", UrcuQsbr{});
  b.add_read("urcu-bp", "liburcu", UrcuBp{});
  b.add_read("std::shared_mutex", "std", StdSharedMutexFlavor{&smutex});
  b.add_read("std::atomic refcount", "std", AtomicRefFlavor{&refcount});

  b.add_sync("bench-trivial", "reference", HpFlavor<TrivialDomain>{&trivial});
  // The grace periods of the schemes that are designs, not baselines; percpu-rwsem's
  // writer is its lock(), measured with readers below.
  hp::sync::for_each_scheme([&](auto s) {
    using Traits = hp::sync::SchemeTraits<decltype(s)::value>;
    if constexpr (!Traits::baseline && s != hotprobe::Scheme::percpu_rwsem) {
      b.add_sync(std::string(Traits::name), "hotprobe",
                 HpFlavor<typename Traits::Domain>{&scheme_domain<typename Traits::Domain>()});
    }
  });
  if (b.selected("percpu-rwsem")) {
    static hp::sync::PercpuRwsem& rwsem = scheme_domain<hp::sync::PercpuRwsem>();
    b.writes.push_back({"percpu-rwsem",
                        "hotprobe",
                        "lock()+unlock()",
                        [&o](int readers, std::vector<double>& us) {
                          HpFlavor<hp::sync::PercpuRwsem> f{&rwsem};
                          run_write_rep(
                              f, readers, o,
                              [] {
                                rwsem.lock();
                                rwsem.unlock();
                              },
                              us);
                        },
                        {}});
  }
  b.add_sync("urcu-memb", "liburcu", UrcuMemb{});
  b.add_sync("urcu-mb", "liburcu", UrcuMb{});
  b.add_sync("urcu-bp", "liburcu", UrcuBp{});

  Machine m = machine();
  std::printf("sync_bench: %s, %d CPUs usable (%d online), %s\n", m.cpu.c_str(), m.nproc, m.online,
              m.kernel.c_str());
  std::printf(
      "  %s, %s; reps %d, read %d ms/rep, %d write calls/rep %d us apart, reader pinning %s\n",
      m.date.c_str(), m.compiler.c_str(), o.reps, o.read_ms, o.sync_samples, o.gap_us,
      o.pin ? "on" : "off");
#ifndef NDEBUG
  std::printf(
      "  WARNING: built without NDEBUG, so HP_ASSERT checks run inside the read paths; configure "
      "a RelWithDebInfo or Release tree for representative numbers\n");
#endif
  std::fflush(stdout);

  // Round-robin: repetition r of every row, then repetition r + 1, so that a noisy moment
  // of the machine hits every row alike.
  std::uint64_t t_start = now_ns();
  Watchdog& dog = *new Watchdog;  // immortal: its thread runs until the process exits
  for (int r = 0; r < o.reps; ++r) {
    for (auto& row : b.reads) {
      for (int t = 1; t <= 2; ++t) {
        dog.enter(row.name, "read side", t);
        ReadRep rep = row.run(t);
        row.ns[t - 1].push_back(rep.ns_per_pair);
        row.mops[t - 1].push_back(rep.mops);
        row.mops_wall[t - 1].push_back(rep.mops_wall);
        row.on_cpu[t - 1].push_back(rep.on_cpu);
      }
    }
    for (auto& row : b.writes) {
      for (int readers = 0; readers <= 2; ++readers) {
        dog.enter(row.name, row.what.c_str(), readers);
        row.run(readers, row.us[readers]);
      }
    }
    std::fprintf(stderr, "  repetition %d/%d done (%.1f s)\n", r + 1, o.reps,
                 static_cast<double>(now_ns() - t_start) / 1e9);
  }

  // ---- Read side.
  std::map<std::string, const ReadRow*> by_name;
  for (auto& row : b.reads)
    by_name[row.name] = &row;
  auto med = [&](const std::string& name, int t) -> double {
    auto it = by_name.find(name);
    return it == by_name.end() ? NAN : stats_of(it->second->ns[t - 1]).median;
  };
  auto min_of = [&](const std::string& name, int t) -> double {
    auto it = by_name.find(name);
    return it == by_name.end() ? NAN : stats_of(it->second->ns[t - 1]).min;
  };
  auto scale = [&](const std::string& name) -> double {
    auto it = by_name.find(name);
    if (it == by_name.end()) return NAN;
    return stats_of(it->second->mops[1]).median / stats_of(it->second->mops[0]).median;
  };
  const double memb1 = med("urcu-memb", 1);

  std::printf(
      "\nRead side: ns of thread CPU time per lock+unlock pair around a pointer load (min / "
      "median of %d);\n  1T/2T: 1 or 2 reader threads; Mops/s: total pairs per CPU-second; "
      "scale2/1: 2T over 1T throughput;\n  2T cpu%%: share of the time the 2 readers were on a "
      "CPU; /memb: 1T median over urcu-memb's\n",
      o.reps);
  std::printf("%-21s %-9s %7s %7s %7s %7s %9s %8s %7s %6s\n", "flavour", "group", "1T min",
              "1T med", "2T min", "2T med", "2T Mops/s", "scale2/1", "2T cpu%", "/memb");
  double worst_on_cpu = 1;
  for (auto& row : b.reads) {
    Stats s1 = stats_of(row.ns[0]), s2 = stats_of(row.ns[1]);
    Stats m2 = stats_of(row.mops[1]), c2 = stats_of(row.on_cpu[1]);
    worst_on_cpu = std::min(worst_on_cpu, c2.median);
    std::printf("%-21s %-9s %7s %7s %7s %7s %9s %8s %7s %6s\n", row.name.c_str(), row.group.c_str(),
                fmt(s1.min).c_str(), fmt(s1.median).c_str(), fmt(s2.min).c_str(),
                fmt(s2.median).c_str(), fmt(m2.median, "%.0f").c_str(),
                fmt(scale(row.name)).c_str(), fmt(c2.median * 100, "%.0f").c_str(),
                fmt(s1.median / memb1).c_str());
  }
  if (worst_on_cpu < 0.9) {
    std::printf(
        "  NOTE: in some rows the 2 readers were on a CPU only %.0f%% of the time (other load on"
        " this machine),\n  so they ran together less and their contention is underestimated;"
        " rerun on a quieter machine.\n",
        worst_on_cpu * 100);
  }

  // ---- Write side.
  std::map<std::string, const WriteRow*> w_by_name;
  for (auto& row : b.writes)
    w_by_name[row.name] = &row;
  std::printf(
      "\nWrite side: us per call (min / median / 90th percentile), alone (0R) and with 1 or 2 "
      "busy readers\n  of the same domain; the writer sleeps %d us between calls\n",
      o.gap_us);
  std::printf("%-13s %-16s %7s %7s %7s %7s %8s %7s %8s %8s %6s\n", "flavour", "operation", "0R min",
              "0R med", "1R min", "1R med", "1R p90", "2R min", "2R med", "2R p90", "n(2R)");
  for (auto& row : b.writes) {
    Stats s[3];
    for (int k = 0; k < 3; ++k)
      s[k] = stats_of(row.us[k]);
    std::printf("%-13s %-16s %7s %7s %7s %7s %8s %7s %8s %8s %6d\n", row.name.c_str(),
                row.what.c_str(), fmt(s[0].min, "%.1f").c_str(), fmt(s[0].median, "%.1f").c_str(),
                fmt(s[1].min, "%.1f").c_str(), fmt(s[1].median, "%.1f").c_str(),
                fmt(s[1].p90, "%.0f").c_str(), fmt(s[2].min, "%.1f").c_str(),
                fmt(s[2].median, "%.1f").c_str(), fmt(s[2].p90, "%.0f").c_str(), s[2].n);
  }
  auto wstat = [&](const std::string& name, int readers) -> Stats {
    auto it = w_by_name.find(name);
    return it == w_by_name.end() ? Stats{} : stats_of(it->second->us[readers]);
  };
  auto best_scale = [&](const std::string& name) -> double {
    auto it = by_name.find(name);
    if (it == by_name.end()) return NAN;
    return stats_of(it->second->mops[1]).max / stats_of(it->second->mops[0]).max;
  };

  // ---- Acceptance: the ratios, decided on medians; the minimums' ratio for context.
  std::vector<Check> checks;
  auto read_ratio = [&](std::string what, const std::string& a, const std::string& b, int t,
                        const char* op, double bound) {
    checks.push_back(
        check(std::move(what), med(a, t) / med(b, t), min_of(a, t) / min_of(b, t), op, bound));
  };
  read_ratio("tasks-trace / urcu-memb read pair, 1 thread", "tasks-trace", "urcu-memb", 1,
             "<=", 1.2);
  read_ratio("tasks-trace / urcu-memb read pair, 2 threads", "tasks-trace", "urcu-memb", 2,
             "<=", 1.2);
  read_ratio("srcu-fast / tasks-trace read pair, 1 thread", "srcu-fast", "tasks-trace", 1,
             "<=", 1.5);
  read_ratio("srcu (classic) / tasks-trace read pair, 1 thread", "srcu", "tasks-trace", 1,
             ">=", 1.5);
  read_ratio("srcu (classic) / tasks-trace read pair, 2 threads", "srcu", "tasks-trace", 2,
             ">=", 1.5);
  read_ratio("refcount / tasks-trace read pair, 1 thread", "refcount", "tasks-trace", 1, ">=", 1.5);
  read_ratio("refcount / tasks-trace read pair, 2 threads", "refcount", "tasks-trace", 2,
             ">=", 1.5);
  checks.push_back(check("tasks-trace reader throughput, 2 threads / 1", scale("tasks-trace"),
                         best_scale("tasks-trace"), ">=", 1.9));
  {
    Stats tt = wstat("tasks-trace", 2), memb = wstat("urcu-memb", 2);
    checks.push_back(check("tasks-trace / urcu-memb synchronize(), 2 busy readers",
                           tt.median / memb.median, tt.min / memb.min, "<=", 2.0));
  }
  std::printf("\nAcceptance (this run; decided on medians, minimums' ratio in brackets)\n");
  for (auto& c : checks) {
    std::printf("  %-52s %6s (%6s) %s %-4s %s\n", c.what.c_str(), fmt(c.ratio).c_str(),
                fmt(c.ratio_min).c_str(), c.op.c_str(), fmt(c.bound, "%.1f").c_str(),
                !c.known ? "n/a (row missing)"
                : c.met  ? "met"
                         : "NOT MET");
  }
  std::printf("\n(total %.1f s)\n", static_cast<double>(now_ns() - t_start) / 1e9);

  // ---- JSON.
  if (!o.json.empty()) {
    std::ofstream out(o.json);
    if (!out) {
      std::fprintf(stderr, "sync_bench: cannot write %s\n", o.json.c_str());
      return 1;
    }
    out << "{\n  \"machine\": {\"cpu\": " << jstr(m.cpu) << ", \"nproc\": " << m.nproc
        << ", \"online\": " << m.online << ", \"kernel\": " << jstr(m.kernel)
        << ", \"date\": " << jstr(m.date) << ", \"compiler\": " << jstr(m.compiler) << "},\n";
    out << "  \"options\": {\"reps\": " << o.reps << ", \"quick\": " << (o.quick ? "true" : "false")
        << ", \"read_ms\": " << o.read_ms << ", \"sync_samples\": " << o.sync_samples
        << ", \"gap_us\": " << o.gap_us << ", \"pin\": " << (o.pin ? "true" : "false")
        << ", \"ndebug\": " << kNdebug << "},\n";
    out << "  \"read\": [\n";
    for (size_t i = 0; i < b.reads.size(); ++i) {
      auto& row = b.reads[i];
      out << "    {\"name\": " << jstr(row.name) << ", \"group\": " << jstr(row.group)
          << ", \"ns_per_pair_1t\": " << jstats(stats_of(row.ns[0]))
          << ", \"ns_per_pair_2t\": " << jstats(stats_of(row.ns[1]))
          << ", \"mops_1t\": " << jstats(stats_of(row.mops[0]))
          << ", \"mops_2t\": " << jstats(stats_of(row.mops[1]))
          << ", \"mops_wall_1t\": " << jstats(stats_of(row.mops_wall[0]))
          << ", \"mops_wall_2t\": " << jstats(stats_of(row.mops_wall[1]))
          << ", \"on_cpu_2t\": " << jstats(stats_of(row.on_cpu[1]))
          << ", \"scaling_2t_over_1t\": " << jnum(scale(row.name)) << "}"
          << (i + 1 < b.reads.size() ? ",\n" : "\n");
    }
    out << "  ],\n  \"write\": [\n";
    for (size_t i = 0; i < b.writes.size(); ++i) {
      auto& row = b.writes[i];
      out << "    {\"name\": " << jstr(row.name) << ", \"group\": " << jstr(row.group)
          << ", \"operation\": " << jstr(row.what)
          << ", \"us_0_readers\": " << jstats(stats_of(row.us[0]))
          << ", \"us_1_busy_reader\": " << jstats(stats_of(row.us[1]))
          << ", \"us_2_busy_readers\": " << jstats(stats_of(row.us[2])) << "}"
          << (i + 1 < b.writes.size() ? ",\n" : "\n");
    }
    out << "  ],\n  \"acceptance\": [\n";
    for (size_t i = 0; i < checks.size(); ++i) {
      auto& c = checks[i];
      out << "    {\"check\": " << jstr(c.what) << ", \"ratio\": " << jnum(c.ratio)
          << ", \"ratio_of_minimums\": " << jnum(c.ratio_min) << ", \"op\": " << jstr(c.op)
          << ", \"bound\": " << jnum(c.bound)
          << ", \"met\": " << (c.known ? (c.met ? "true" : "false") : "null") << "}"
          << (i + 1 < checks.size() ? ",\n" : "\n");
    }
    out << "  ]\n}\n";
  }
  return 0;
}
