// Exact counting under races. Three threads call probed functions in a loop while another
// thread attaches and detaches the probes (or consumers on a site that another consumer
// keeps patched), for every scheme, in jmp and int3 mode, one spec at a time and in
// batches. Every call carries (thread, sequence number, function) in its arguments; the
// handler records, in memory only the calling thread writes, how many times it ran for
// that call. The attaching thread publishes an epoch around each attach()/detach():
//
//   4k+1  attach() of cycle k running     4k+2  attached (attach() returned)
//   4k+3  detach() running                4k+4  detached (detach() returned)
//
// and each worker reads it before (e0) and after (e1) its call. Then, for each call:
//   - e0 == e1 == 4k+2: the call started after attach() returned and finished before
//     detach() was called: it must be counted exactly once ("missed" otherwise);
//   - e0 == e1 == 4k (idle): the call lies wholly outside [attach start, detach return]:
//     it must not be counted ("outside");
//   - any call: never counted twice ("doubled"), never by another function's consumer
//     ("wrong function"), and it returns its exact value ("bad result").
// A permanent consumer, where present, must count every call exactly once.
//
// The harness is proven able to fail by deliberately broken fake drivers (late attach,
// lingering detach, double counting) that must each produce their violation.
//
// Duration: HOTPROBE_STRESS_SECONDS (default 3) is the budget for the whole engine matrix
// (each case gets 1/20 of it, at least 60 ms); sanitizer builds halve it.
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "internal_probes.h"

#include "hotprobe/probe.h"

// Four targets with instruction boundaries inside the bytes a jump displaces
// (push rbp | mov rbp, rsp | lea), so threads are caught mid-site and must be moved.
// f(t, seq, fn) = t + seq + fn.
asm(R"(
  .pushsection .text
  .macro HP_RS_FN name
  .p2align 4
  .globl \name
  .type \name, @function
\name:
  pushq %rbp
  movq %rsp, %rbp
  leaq (%rdi,%rsi,1), %rax
  addq %rdx, %rax
  popq %rbp
  ret
  .size \name, .-\name
  .endm
  HP_RS_FN hp_rs_f0
  HP_RS_FN hp_rs_f1
  HP_RS_FN hp_rs_f2
  HP_RS_FN hp_rs_f3
  .popsection
)");

extern "C" {
long hp_rs_f0(long t, long seq, long fn);
long hp_rs_f1(long t, long seq, long fn);
long hp_rs_f2(long t, long seq, long fn);
long hp_rs_f3(long t, long seq, long fn);
}

namespace {

// The engine installs internal probes (the module watcher on _dl_debug_state, the
// unwinder hooks) on its first attach and first return probe; they count in
// Stats::sites_jmp / sites_int3. Install them before any test compares those counts.
// A trap the engine does not recognise as its own would kill the process with a bare
// "Trace/breakpoint trap". The engine passes such traps to the handler that was installed
// before it: this one says where the trap was and what the bytes there are (0xcc
// everywhere around it: trampoline or int3-copy memory that was freed while a thread was
// still headed for it), then aborts.
void put_hex(char*& p, std::uint64_t v) {
  for (int i = 60; i >= 0; i -= 4)
    *p++ = "0123456789abcdef"[(v >> i) & 15];
}
void unexpected_trap(int, siginfo_t*, void* ucv) {
  auto* uc = static_cast<ucontext_t*>(ucv);
  const std::uint64_t rip = static_cast<std::uint64_t>(uc->uc_mcontext.gregs[REG_RIP]);
  char buf[256];
  char* p = buf;
  const char head[] = "\nrace_stress_test: SIGTRAP the engine did not recognise, rip 0x";
  for (const char* h = head; *h; h++)
    *p++ = *h;
  put_hex(p, rip);
  const char mid[] = ", bytes at rip-9..rip+6:";
  for (const char* h = mid; *h; h++)
    *p++ = *h;
  const auto* b = reinterpret_cast<const unsigned char*>(rip - 9);
  for (int i = 0; i < 16; i++) {
    *p++ = ' ';
    *p++ = "0123456789abcdef"[b[i] >> 4];
    *p++ = "0123456789abcdef"[b[i] & 15];
  }
  *p++ = '\n';
  (void)!write(2, buf, static_cast<std::size_t>(p - buf));
  std::abort();
}

// The SIGTRAP handler above goes in before the engine installs its own.
void install_unexpected_trap() {
  struct sigaction sa {};
  sa.sa_sigaction = unexpected_trap;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTRAP, &sa, nullptr);
}
[[maybe_unused]] ::testing::Environment* const g_install_internal_probes =
    ::testing::AddGlobalTestEnvironment(
        new hp_test::InternalProbesEnvironment(":hp_rs_f3", &install_unexpected_trap));

using hotprobe::Engine;
using hotprobe::EngineOptions;
using hotprobe::Handle;
using hotprobe::Hit;
using hotprobe::ProbeSpec;
using hotprobe::Regs;
using hotprobe::Scheme;
using Clock = std::chrono::steady_clock;

constexpr int kWorkers = 3;
constexpr int kFns = 4;
using Fn = long (*)(long, long, long);

#if defined(HOTPROBE_TSAN) || defined(HOTPROBE_ASAN)
constexpr bool kSanitizer = true;
#else
constexpr bool kSanitizer = false;
#endif

double stress_seconds() {
  double s = 3;
  if (const char* e = std::getenv("HOTPROBE_STRESS_SECONDS")) s = std::atof(e);
  if (s <= 0) s = 3;
  return kSanitizer ? s / 2 : s;
}

// Per worker, written only by that worker's thread (the handler runs on it).
struct alignas(64) Slot {
  std::uint64_t seq = 0;
  std::uint64_t count = 0;
  std::uint64_t wrong_fn = 0;
  std::uint64_t late = 0;  // handler runs that ended after detach() returned
};

// The epoch of the run in progress (set before the workers start).
const std::atomic<std::uint64_t>* g_epoch = nullptr;

// A transient consumer's handler stays a while in one call of 32 (so detach() finds
// handlers running) and checks, as it leaves, that detach() has not returned: detach
// must wait for running handlers (the grace period of the scheme).
void slow_down_and_check_late(std::uint64_t seq, Slot& s) {
  if ((seq & 31) == 0) {
    const auto until = Clock::now() + std::chrono::microseconds(5);
    while (Clock::now() < until) {
    }
  }
  if (g_epoch && g_epoch->load(std::memory_order_seq_cst) % 4 == 0) s.late++;
}

// One consumer's record.
struct Cookie {
  long fn = 0;  // the function it is attached to
  Slot slots[kWorkers];
  Slot returns[kWorkers];  // return handler runs (return-probe kinds)
  bool transient = true;   // attached and detached by the driver
};

void rs_handler(Hit& h) {
  auto* c = static_cast<Cookie*>(h.cookie);
  const std::uint64_t t = h.regs->arg(0);
  if (t >= kWorkers) return;
  Slot& s = c->slots[t];
  if (static_cast<long>(h.regs->arg(2)) != c->fn) s.wrong_fn++;
  const std::uint64_t seq = h.regs->arg(1);
  if (s.seq == seq) {
    s.count++;
  } else {
    s.seq = seq;
    s.count = 1;
  }
  if (c->transient) slow_down_and_check_late(seq, s);
}

std::uint64_t counted(const Cookie& c, int t, std::uint64_t seq) {
  return c.slots[t].seq == seq ? c.slots[t].count : 0;
}

// Entry + return consumers: the entry passes (seq, thread) to the return through
// Hit::data; the return checks the value (t + seq + fn). A wrong value counts as a wrong
// function.
void rs_entry_for_return(Hit& h) {
  rs_handler(h);
  if (h.data) *h.data = h.regs->arg(1) << 2 | h.regs->arg(0);
}
void rs_return(Hit& h) {
  auto* c = static_cast<Cookie*>(h.cookie);
  const std::uint64_t t = *h.data & 3, seq = *h.data >> 2;
  if (t >= kWorkers) return;
  Slot& s = c->returns[t];
  if (h.regs->ret() != t + seq + static_cast<std::uint64_t>(c->fn)) s.wrong_fn++;
  if (s.seq == seq) {
    s.count++;
  } else {
    s.seq = seq;
    s.count = 1;
  }
  if (c->transient) slow_down_and_check_late(seq, s);
}
std::uint64_t returned(const Cookie& c, int t, std::uint64_t seq) {
  return c.returns[t].seq == seq ? c.returns[t].count : 0;
}

// What attaches and detaches: the engine, or a fake for the harness's self-tests.
class Driver {
 public:
  virtual ~Driver() = default;
  virtual std::string attach() = 0;  // empty: fine; else the error
  virtual std::string detach() = 0;
};

struct Totals {
  std::uint64_t calls = 0, must = 0, idle = 0, boundary = 0, boundary_counted = 0;
  std::uint64_t missed = 0, outside = 0, doubled = 0, wrong_fn = 0, bad_result = 0;
  std::uint64_t permanent_bad = 0;
  std::uint64_t return_bad = 0;  // a return handler run that does not match the entry's
  std::uint64_t late = 0;        // handlers still running after detach() returned
  std::uint64_t cycles = 0;
  double attach_ms = 0, detach_ms = 0;  // time spent in attach() and detach()
  std::string driver_error;
  std::string first_violation;

  void add(const Totals& o) {
    calls += o.calls, must += o.must, idle += o.idle, boundary += o.boundary;
    boundary_counted += o.boundary_counted, missed += o.missed, outside += o.outside;
    doubled += o.doubled, wrong_fn += o.wrong_fn, bad_result += o.bad_result;
    permanent_bad += o.permanent_bad, return_bad += o.return_bad, late += o.late;
    if (first_violation.empty()) first_violation = o.first_violation;
  }
  std::string summary() const {
    auto ms = [&](double total) {
      return std::to_string(cycles ? total / static_cast<double>(cycles) : 0.0);
    };
    return "cycles " + std::to_string(cycles) + " (attach " + ms(attach_ms) + " ms, detach " +
           ms(detach_ms) + " ms each), calls " + std::to_string(calls) + " (attached window " +
           std::to_string(must) + ", idle " + std::to_string(idle) + ", across an attach/detach " +
           std::to_string(boundary) + " of which counted " + std::to_string(boundary_counted) +
           "); missed " + std::to_string(missed) + ", outside " + std::to_string(outside) +
           ", doubled " + std::to_string(doubled) + ", wrong function " + std::to_string(wrong_fn) +
           ", bad result " + std::to_string(bad_result) + ", permanent consumer not exactly once " +
           std::to_string(permanent_bad) + ", returns not matching entries " +
           std::to_string(return_bad) + ", handlers running after detach returned " +
           std::to_string(late) +
           (first_violation.empty() ? "" : "; first violation: " + first_violation) +
           (driver_error.empty() ? "" : "; driver error: " + driver_error);
  }
};

struct RunSetup {
  std::vector<Fn> fns;                 // called round-robin by seq
  std::vector<Cookie*> watched[kFns];  // transient consumers of each function
  Cookie* permanent = nullptr;         // counts every call of fns[0] (hot-site kinds)
  bool returns = false;                // the watched consumers have return handlers
  std::chrono::milliseconds duration{200};
  unsigned min_cycles = 5;
};

Totals run(Driver& d, const RunSetup& s) {
  std::atomic<std::uint64_t> epoch{0};
  g_epoch = &epoch;
  std::atomic<bool> stop{false};
  std::atomic<int> ready{0};
  // Whether some call ran wholly inside an attached window, and some wholly inside a
  // detached one: the run goes on (up to its hard deadline) until both happened, so a
  // loaded machine that stretches every call across a boundary does not make the run
  // prove nothing. Written once each (a relaxed load first keeps the line shared).
  std::atomic<bool> saw_attached{false}, saw_idle{false};
  Totals per[kWorkers];
  const long nfn = static_cast<long>(s.fns.size());

  auto worker = [&](int t) {
    Totals& v = per[t];
    std::uint64_t seq = 0;
    ready.fetch_add(1);
    while (!stop.load(std::memory_order_relaxed)) {
      ++seq;
      const long fn = static_cast<long>(seq % static_cast<std::uint64_t>(nfn));
      const std::uint64_t e0 = epoch.load(std::memory_order_seq_cst);
      const long r = s.fns[fn](t, static_cast<long>(seq), fn);
      const std::uint64_t e1 = epoch.load(std::memory_order_seq_cst);
      v.calls++;
      auto violation = [&](const char* what, std::uint64_t n) {
        if (v.first_violation.empty()) {
          v.first_violation = std::string(what) + ": thread " + std::to_string(t) + " call " +
                              std::to_string(seq) + " of f" + std::to_string(fn) + " counted " +
                              std::to_string(n) + " times, epochs " + std::to_string(e0) + ".." +
                              std::to_string(e1);
        }
      };
      if (r != t + static_cast<long>(seq) + fn) {
        v.bad_result++;
        violation("bad result", 0);
      }
      const bool attached_window = e0 == e1 && e0 % 4 == 2;
      const bool idle_window = e0 == e1 && e0 % 4 == 0;
      if (attached_window) {
        v.must++;
        if (!saw_attached.load(std::memory_order_relaxed)) saw_attached.store(true);
      }
      if (idle_window) {
        v.idle++;
        if (!saw_idle.load(std::memory_order_relaxed)) saw_idle.store(true);
      }
      if (!attached_window && !idle_window) v.boundary++;
      for (Cookie* c : s.watched[fn]) {
        const std::uint64_t n = counted(*c, t, seq);
        if (n > 1) {
          v.doubled++;
          violation("doubled", n);
        } else if (attached_window && n != 1) {
          v.missed++;
          violation("missed", n);
        } else if (idle_window && n != 0) {
          v.outside++;
          violation("outside", n);
        } else if (!attached_window && !idle_window) {
          v.boundary_counted += n;
        }
        if (s.returns) {
          // The return runs iff the entry ran, except that a consumer detached while the
          // call was in flight may lose its return (never gain one).
          const std::uint64_t r = returned(*c, t, seq);
          if (r > n || (attached_window && r != 1) || (idle_window && r != 0)) {
            v.return_bad++;
            violation("return", r);
          }
        }
      }
      if (s.permanent && fn == 0 && counted(*s.permanent, t, seq) != 1) {
        v.permanent_bad++;
        violation("permanent consumer", counted(*s.permanent, t, seq));
      }
    }
    for (int f = 0; f < kFns; f++)
      for (Cookie* c : s.watched[f])
        v.wrong_fn += c->slots[t].wrong_fn + c->returns[t].wrong_fn,
            v.late += c->slots[t].late + c->returns[t].late;
    if (s.permanent) v.wrong_fn += s.permanent->slots[t].wrong_fn;
  };

  std::vector<std::thread> th;
  for (int t = 0; t < kWorkers; t++)
    th.emplace_back(worker, t);
  while (ready.load() < kWorkers)
    std::this_thread::yield();

  Totals out;
  std::mt19937 rng(12345);
  std::uniform_int_distribution<int> pause_us(20, 400);
  auto pause = [&] {
    const auto until = Clock::now() + std::chrono::microseconds(pause_us(rng));
    while (Clock::now() < until)
      std::this_thread::sleep_for(std::chrono::microseconds(50));
  };
  const auto deadline = Clock::now() + s.duration;
  // The run ends at its deadline once it has done min_cycles and seen both windows. On a
  // loaded 2-core machine under a sanitizer one detach can take half a second, so that
  // takes longer than the deadline: the run waits for it. The hard deadline only stops a
  // run whose engine no longer makes progress (a hang), and the checks below then fail.
  const auto hard_deadline = Clock::now() + 4 * s.duration + std::chrono::seconds(60);
  for (std::uint64_t k = 0;; k++) {
    const auto now = Clock::now();
    if (now >= hard_deadline ||
        (now >= deadline && k >= s.min_cycles && saw_attached.load() && saw_idle.load()))
      break;
    epoch.store(4 * k + 1, std::memory_order_seq_cst);
    const auto t0 = Clock::now();
    std::string err = d.attach();
    const auto t1 = Clock::now();
    epoch.store(4 * k + 2, std::memory_order_seq_cst);
    out.attach_ms += std::chrono::duration<double, std::milli>(t1 - t0).count();
    if (!err.empty()) {
      out.driver_error = "attach: " + err;
      epoch.store(4 * k + 4, std::memory_order_seq_cst);
      break;
    }
    pause();
    epoch.store(4 * k + 3, std::memory_order_seq_cst);
    const auto t2 = Clock::now();
    err = d.detach();
    const auto t3 = Clock::now();
    epoch.store(4 * k + 4, std::memory_order_seq_cst);
    out.detach_ms += std::chrono::duration<double, std::milli>(t3 - t2).count();
    if (!err.empty()) {
      out.driver_error = "detach: " + err;
      break;
    }
    out.cycles++;
    pause();
  }
  stop.store(true);
  for (auto& x : th)
    x.join();
  g_epoch = nullptr;
  for (const Totals& v : per)
    out.add(v);
  return out;
}

// ---------------------------------------------------------------------------------------
// The harness's self-tests: fake probes that can be broken on purpose.

std::atomic<int> g_fake_times{0};           // how many times the fake "probe" runs the handler
std::atomic<bool> g_fake_inside[kWorkers];  // a fake read-side section per worker
Cookie* g_fake_cookie = nullptr;

extern "C" __attribute__((noinline, used)) long hp_rs_fake(long t, long seq, long fn) {
  g_fake_inside[t].store(true, std::memory_order_seq_cst);
  const int n = g_fake_times.load(std::memory_order_seq_cst);
  for (int i = 0; i < n; i++) {
    Regs r{};
    r.rdi = static_cast<std::uint64_t>(t);
    r.rsi = static_cast<std::uint64_t>(seq);
    r.rdx = static_cast<std::uint64_t>(fn);
    Hit h{&r, g_fake_cookie, nullptr, 0};
    rs_handler(h);
  }
  g_fake_inside[t].store(false, std::memory_order_release);
  return t + seq + fn;
}

enum class Fake { correct, late_attach, lingering_detach, double_count, no_grace_period };

// Waits until every worker has been seen outside hp_rs_fake once.
void fake_grace_period() {
  for (auto& in : g_fake_inside)
    while (in.load(std::memory_order_seq_cst))
      std::this_thread::yield();
}

class FakeDriver : public Driver {
 public:
  explicit FakeDriver(Fake f) : f_(f) {}
  ~FakeDriver() override {
    if (th_.joinable()) th_.join();
    g_fake_times.store(0);
  }
  std::string attach() override {
    if (th_.joinable()) th_.join();
    if (f_ == Fake::correct || f_ == Fake::lingering_detach || f_ == Fake::no_grace_period)
      g_fake_times.store(1);
    if (f_ == Fake::double_count) g_fake_times.store(2);
    return {};  // late_attach: "attached" without doing anything
  }
  std::string detach() override {
    switch (f_) {
      case Fake::late_attach:  // counts only while detach() runs
        g_fake_times.store(1);
        std::this_thread::sleep_for(std::chrono::microseconds(100));
        g_fake_times.store(0);
        fake_grace_period();
        break;
      case Fake::no_grace_period:  // returns while handlers may still run
        g_fake_times.store(0);
        break;
      case Fake::lingering_detach:  // stops counting 1 ms after detach() returned
        th_ = std::thread([] {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
          g_fake_times.store(0);
        });
        break;
      default:
        g_fake_times.store(0);
        fake_grace_period();
    }
    return {};
  }

 private:
  Fake f_;
  std::thread th_;
};

Totals run_fake(Fake f) {
  Cookie c;
  g_fake_cookie = &c;
  RunSetup s;
  s.fns = {&hp_rs_fake};
  s.watched[0] = {&c};
  s.duration = std::chrono::milliseconds(150);
  s.min_cycles = 20;
  FakeDriver d(f);
  return run(d, s);
}

TEST(RaceHarness, CorrectFakeProbePasses) {
  Totals t = run_fake(Fake::correct);
  EXPECT_EQ(t.missed + t.outside + t.doubled + t.wrong_fn + t.bad_result + t.late, 0u)
      << t.summary();
  EXPECT_GT(t.must, 0u) << t.summary();
  EXPECT_GT(t.idle, 0u) << t.summary();
}
TEST(RaceHarness, LateAttachIsCaught) {
  Totals t = run_fake(Fake::late_attach);
  EXPECT_GT(t.missed, 0u) << t.summary();
}
TEST(RaceHarness, LingeringDetachIsCaught) {
  Totals t = run_fake(Fake::lingering_detach);
  EXPECT_GT(t.outside, 0u) << t.summary();
}
TEST(RaceHarness, DetachWithoutGracePeriodIsCaught) {
  Totals t = run_fake(Fake::no_grace_period);
  EXPECT_GT(t.late, 0u) << t.summary();
}
TEST(RaceHarness, DoubleCountIsCaught) {
  Totals t = run_fake(Fake::double_count);
  EXPECT_GT(t.doubled, 0u) << t.summary();
}

// ---------------------------------------------------------------------------------------
// The engine.

class EngineDriver : public Driver {
 public:
  EngineDriver(Engine& e, std::vector<ProbeSpec> specs, bool batch)
      : e_(e), specs_(std::move(specs)), batch_(batch) {}
  ~EngineDriver() override {
    if (!handles_.empty()) (void)e_.detach(handles_);
  }
  std::string attach() override {
    handles_.clear();
    if (batch_) {
      auto rs = e_.attach(specs_, hotprobe::BatchMode::all_or_nothing);
      for (auto& r : rs) {
        if (!r.ok()) return r.error().message();
        handles_.insert(handles_.end(), r->begin(), r->end());
      }
    } else {
      for (const ProbeSpec& s : specs_) {
        auto r = e_.attach(s);
        if (!r.ok()) return r.error().message();
        handles_.insert(handles_.end(), r->begin(), r->end());
      }
    }
    return {};
  }
  std::string detach() override {
    if (batch_) {
      auto r = e_.detach(handles_);
      handles_.clear();
      if (!r.ok()) return r.error().message();
    } else {
      for (Handle h : handles_) {
        auto r = e_.detach(h);
        if (!r.ok()) return r.error().message();
      }
      handles_.clear();
    }
    return {};
  }

 private:
  Engine& e_;
  std::vector<ProbeSpec> specs_;
  bool batch_;
  std::vector<Handle> handles_;
};

enum class Kind {
  single,           // one function, attach(spec) / detach(handle)
  batch,            // four functions in one attach(span) / detach(span)
  consumer,         // one consumer on a site kept patched by a permanent consumer
  consumers_batch,  // two consumers on that site, attached and detached as one batch
  returns,          // one function, entry + return probe, attach(spec) / detach(handle)
};
const char* kind_name(Kind k) {
  switch (k) {
    case Kind::single:
      return "single";
    case Kind::batch:
      return "batch";
    case Kind::consumer:
      return "consumer";
    case Kind::consumers_batch:
      return "consumers_batch";
    case Kind::returns:
      return "returns";
  }
  return "?";
}

struct Param {
  Kind kind;
  Scheme scheme;
  bool int3;
};
std::string param_name(const ::testing::TestParamInfo<Param>& i) {
  std::string s(hotprobe::to_string(i.param.scheme));
  for (char& c : s)
    if (c == '-') c = '_';
  return std::string(kind_name(i.param.kind)) + "_" + s + (i.param.int3 ? "_int3" : "_jmp");
}
std::vector<Param> params() {
  std::vector<Param> v;
  for (Kind k : {Kind::single, Kind::batch, Kind::consumer, Kind::consumers_batch, Kind::returns})
    for (Scheme s : hotprobe::all_schemes())
      for (bool int3 : {false, true})
        v.push_back({k, s, int3});
  return v;
}

ProbeSpec rs_spec(int fn, Cookie* c, bool int3) {
  static const char* const names[kFns] = {":hp_rs_f0", ":hp_rs_f1", ":hp_rs_f2", ":hp_rs_f3"};
  ProbeSpec s;
  s.target = names[fn];
  s.on_entry = &rs_handler;
  s.cookie = c;
  s.force_int3 = int3;
  s.allow_int3 = int3;
  return s;
}

class ExactCounting : public ::testing::TestWithParam<Param> {};

TEST_P(ExactCounting, UnderAttachDetachRaces) {
  const Param p = GetParam();
#if defined(HOTPROBE_TSAN)
  // Patching a jump over code that other threads run moves them out of the displaced
  // bytes from a signal handler; TSan runs asynchronous handlers late, on a copy of the
  // context, so the move cannot work there. The hot-site kinds patch before the threads
  // start, and int3 mode patches one byte (no move): those run. Return probes in int3 mode
  // count recursion misses under TSan that the release and ASan builds do not: skipped
  // there until that is understood (docs/design/engine-tests.md).
  if (((!p.int3 && (p.kind == Kind::single || p.kind == Kind::batch)) || p.kind == Kind::returns) &&
      !std::getenv("HOTPROBE_TSAN_TRY_MOVES")) {
    GTEST_SKIP() << "jmp-mode patching under running threads needs thread moves, which "
                    "ThreadSanitizer's deferred signal delivery defeats";
  }
#endif
  EngineOptions o;
  o.scheme = p.scheme;
  auto created = Engine::create(o);
  ASSERT_TRUE(created.ok()) << created.error().message();
  Engine& e = **created;

  Cookie cookies[kFns];
  Cookie extra, permanent;
  permanent.transient = false;
  for (int f = 0; f < kFns; f++)
    cookies[f].fn = f;
  RunSetup s;
  s.duration = std::chrono::milliseconds(
      std::max<long>(60, static_cast<long>(stress_seconds() * 1000 / 20)));
  std::vector<ProbeSpec> specs;
  std::vector<Handle> permanent_handles;
  bool batch = false;
  switch (p.kind) {
    case Kind::single:
      s.fns = {&hp_rs_f0};
      s.watched[0] = {&cookies[0]};
      specs = {rs_spec(0, &cookies[0], p.int3)};
      break;
    case Kind::returns:
      s.fns = {&hp_rs_f0};
      s.watched[0] = {&cookies[0]};
      s.returns = true;
      specs = {rs_spec(0, &cookies[0], p.int3)};
      specs[0].on_entry = &rs_entry_for_return;
      specs[0].on_return = &rs_return;
      break;
    case Kind::batch:
      s.fns = {&hp_rs_f0, &hp_rs_f1, &hp_rs_f2, &hp_rs_f3};
      for (int f = 0; f < kFns; f++) {
        s.watched[f] = {&cookies[f]};
        specs.push_back(rs_spec(f, &cookies[f], p.int3));
      }
      batch = true;
      break;
    case Kind::consumer:
    case Kind::consumers_batch: {
      s.fns = {&hp_rs_f0};
      auto h = e.attach(rs_spec(0, &permanent, p.int3));
      ASSERT_TRUE(h.ok()) << h.error().message();
      permanent_handles = *h;
      s.permanent = &permanent;
      s.watched[0] = {&cookies[0]};
      specs = {rs_spec(0, &cookies[0], p.int3)};
      if (p.kind == Kind::consumers_batch) {
        s.watched[0].push_back(&extra);
        specs.push_back(rs_spec(0, &extra, p.int3));
        batch = true;
      }
      break;
    }
  }
  const auto before = e.stats();
  Totals t;
  {
    EngineDriver d(e, specs, batch);
    t = run(d, s);
  }
  if (!permanent_handles.empty()) {
    ASSERT_TRUE(e.detach(permanent_handles).ok());
  }
  const auto after = e.stats();
  RecordProperty("summary", t.summary());
  EXPECT_TRUE(t.driver_error.empty()) << t.summary();
  EXPECT_EQ(t.missed, 0u) << t.summary();
  EXPECT_EQ(t.outside, 0u) << t.summary();
  EXPECT_EQ(t.doubled, 0u) << t.summary();
  EXPECT_EQ(t.wrong_fn, 0u) << t.summary();
  EXPECT_EQ(t.bad_result, 0u) << t.summary();
  EXPECT_EQ(t.permanent_bad, 0u) << t.summary();
  EXPECT_EQ(t.return_bad, 0u) << t.summary();
  EXPECT_EQ(t.late, 0u) << "detach() returned while handlers still ran: " << t.summary();
  // The run must have exercised both sides, or it proves nothing.
  EXPECT_GE(t.cycles, 5u) << t.summary();
  EXPECT_GT(t.must, 0u) << "no call ran wholly inside an attached window: " << t.summary();
  EXPECT_GT(t.idle, 0u) << "no call ran wholly inside a detached window: " << t.summary();
  EXPECT_EQ(after.misses_recursion, before.misses_recursion);
  EXPECT_EQ(after.consumers, 0u);
  EXPECT_EQ(after.sites_jmp + after.sites_int3,
            before.sites_jmp + before.sites_int3 - (permanent_handles.empty() ? 0 : 1))
      << "a site stayed patched";
  if (HasFailure()) std::printf("%s\n", t.summary().c_str());
}

INSTANTIATE_TEST_SUITE_P(Matrix, ExactCounting, ::testing::ValuesIn(params()), param_name);

}  // namespace
