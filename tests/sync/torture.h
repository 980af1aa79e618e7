// Torture test for every ReclaimingDomain, in the manner of the kernel's rcutorture and
// liburcu's tests/regression/rcutorture.h (ideas only; see docs/design/torture.md).
//
// One writer publishes objects through an atomic pointer and retires the old ones in
// four ways (synchronize(), call(), retire(), start_poll()/poll()). Every retired object
// goes through a "pipe" of kPipeLen grace periods: each grace period that ends after its
// removal bumps its pipe count, and when the count reaches kPipeLen it is POISONED, then
// kept in a quarantine for a while, then freed. Readers (long-lived and short-lived
// threads) enter read sections, load the pointer, linger, nest, and re-check the object:
// a correct domain never lets a reader see pipe >= 1, let alone poison. The "Reader Pipe"
// histogram prints what they saw; a read with age >= 2 or of a poisoned object is an
// error. A deliberately broken domain (BrokenDomain below) must make the run fail.
//
// Everything the readers read is a relaxed atomic, so that a broken domain produces
// poisoned reads rather than data-race reports, and correct domains stay race-free.
#pragma once

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>

#include <cerrno>

#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "sync/deferred.h"
#include "sync/domain.h"
#include "sync/gp_seq.h"

namespace hp::torture {

using Clock = std::chrono::steady_clock;

// Grace periods an object spends retired before it is poisoned (rcutorture uses 10; a
// shorter pipe poisons sooner, which makes a broken domain show up faster).
inline constexpr unsigned kPipeLen = 4;
// Histogram of how many writer grace periods ended during one read section (rcutorture's
// "Reader Batch"); informational only.
inline constexpr unsigned kBatchLen = 4;

inline constexpr std::uint64_t kLiveMagic = 0x4c49564550524f42ull;    // "LIVEPROB"
inline constexpr std::uint64_t kPoisonMagic = 0xdeaddeaddeaddeadull;  // after reclamation
inline constexpr std::uint64_t kPoisonWord = 0x6b6b6b6b6b6b6b6bull;   // slab-style poison

// splitmix64: small, fast, good enough for scheduling choices; one per thread.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : s_(seed) {}
  std::uint64_t next() noexcept {
    std::uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n).
  std::uint64_t below(std::uint64_t n) noexcept { return next() % n; }
  bool one_in(std::uint64_t n) noexcept { return below(n) == 0; }

 private:
  std::uint64_t s_;
};

// ---------------------------------------------------------------------------------------
// Options: HOTPROBE_STRESS_SECONDS (default 3, per flavour) and HOTPROBE_TORTURE_SEED
// (default: random, printed) come from the environment.

struct Options {
  double seconds = 3.0;
  std::uint64_t seed = 0;
  unsigned readers = 4;
  // Free poisoned objects once they leave a bounded quarantine (correct flavours, so that
  // long runs stay bounded in memory), or keep every one of them until all readers have
  // exited (flavours expected to fail: a reader may still hold any of them, and reading
  // poison is the detection, a real use-after-free would be a crash).
  bool free_during_run = true;
  std::size_t quarantine = 4096;
  // Stop early once this many bad reads were seen (for flavours expected to fail).
  std::uint64_t stop_after_errors = 0;
  // Also run read sections from a signal handler that interrupts the long-lived readers
  // anywhere, inside or outside their own sections, even halfway through read_lock() (the
  // int3 mode runs probe handlers from SIGTRAP). Only for domains whose read side claims
  // to be async-signal-safe.
  bool signal_readers = false;
  // Fork the process now and then while everything runs (from the churner, while its
  // short-lived readers start and exit). The child, the only thread left, must find a
  // working domain: sections, synchronize(), call()+barrier(), polling. Only for domains
  // that document fork support.
  bool fork_children = false;
  // Abort with a report if the writer (or the final drain) makes no progress this long
  // (grace periods take milliseconds, even under TSan: 10 s is a hang, not slowness).
  double stall_seconds = 10.0;
  bool verbose = true;
};

inline double env_seconds(double fallback) {
  if (const char* s = std::getenv("HOTPROBE_STRESS_SECONDS")) {
    char* end = nullptr;
    double v = std::strtod(s, &end);
    if (end != s && v > 0) return v;
  }
  return fallback;
}

inline std::uint64_t env_seed() {
  if (const char* s = std::getenv("HOTPROBE_TORTURE_SEED")) {
    char* end = nullptr;
    std::uint64_t v = std::strtoull(s, &end, 0);
    if (end != s) return v;
  }
  std::uint64_t t = static_cast<std::uint64_t>(Clock::now().time_since_epoch().count());
  return Rng(t ^ (static_cast<std::uint64_t>(::getpid()) << 32)).next();
}

// Defaults for this build. Sanitizers make every thread several times slower; the run is
// time-bounded anyway, so only the number of readers is scaled down under TSan.
inline Options default_options() {
  Options o;
  o.seconds = env_seconds(3.0);
  o.seed = env_seed();
#if defined(HOTPROBE_TSAN)
  o.readers = 3;
#endif
  return o;
}

// ---------------------------------------------------------------------------------------
// Report

struct Report {
  std::string flavour;
  std::uint64_t seed = 0;
  double seconds = 0;
  unsigned readers = 0;

  // Readers.
  std::uint64_t reads = 0;                         // top-level read sections
  std::uint64_t nested = 0;                        // nested sections inside them
  std::uint64_t lingers = 0;                       // sections that slept inside
  std::uint64_t churn_threads = 0;                 // short-lived reader threads started and exited
  std::uint64_t churn_reads = 0;                   // sections run by them (included in reads)
  std::array<std::uint64_t, kPipeLen + 1> pipe{};  // max age seen per section
  std::array<std::uint64_t, kBatchLen> batch{};    // writer GPs ended during a section

  // Writer side.
  std::uint64_t updates = 0;           // pointer replacements
  std::uint64_t syncs = 0;             // synchronize() calls returned (writer + fake writer)
  std::uint64_t calls = 0;             // call() issued (including re-queues)
  std::uint64_t retires = 0;           // retire() issued
  std::uint64_t callbacks = 0;         // callbacks run (call stages + retire deleters)
  std::uint64_t polls = 0;             // start_poll() cookies that were seen done
  std::uint64_t barriers = 0;          // barrier() calls returned
  std::uint64_t poisoned_objects = 0;  // objects that reached the end of the pipe
  std::uint64_t shuffles = 0;          // reader CPU affinity changes
  std::uint64_t signals = 0;           // signals sent to readers (signal_readers)
  std::uint64_t signal_reads = 0;      // read sections run in the handler (included in reads)
  std::uint64_t forks = 0;             // fork children checked (fork_children)
  double max_gp_ms = 0;                // longest synchronize() seen

  // Errors: any nonzero count fails a flavour expected to pass.
  std::uint64_t err_poisoned = 0;         // a reader saw a poisoned (reclaimed) object
  std::uint64_t err_stale = 0;            // a reader saw an object >= 2 grace periods old
  std::uint64_t err_bad_magic = 0;        // neither live nor poisoned: garbage / freed memory
  std::uint64_t err_torn = 0;             // live object with inconsistent contents
  std::uint64_t err_gen_backwards = 0;    // a later section saw an older generation
  std::uint64_t err_in_reader = 0;        // in_reader() wrong inside or outside a section
  std::uint64_t err_poll_after_sync = 0;  // poll(c) false after a later synchronize()
  std::uint64_t err_poll_stall = 0;       // poll(c) never became true
  std::uint64_t err_barrier = 0;          // barrier() returned before earlier callbacks ran
  std::uint64_t err_drain = 0;            // callbacks/polls still pending at the end
  std::uint64_t err_cb_in_reader = 0;     // a callback ran inside a read section
  std::uint64_t err_fork = 0;             // a fork child found a broken or hanging domain
  std::string first_error;                // the first writer-side error, for the log

  // Not an error (the domain is still correct), but worth a look: rcutorture's "???".
  static constexpr double kWriterStallMs = 1000;
  bool writer_stalled() const { return max_gp_ms > kWriterStallMs; }

  std::uint64_t errors() const {
    return err_poisoned + err_stale + err_bad_magic + err_torn + err_gen_backwards + err_in_reader +
           err_poll_after_sync + err_poll_stall + err_barrier + err_drain + err_cb_in_reader +
           err_fork;
  }
  // Reads that the domain let go wrong (what a broken synchronize()/call() produces).
  std::uint64_t bad_reads() const { return err_poisoned + err_stale + err_bad_magic + err_torn; }

  std::string format() const {
    std::string s;
    char line[512];
    auto add = [&](const char* fmt, auto... a) {
      std::snprintf(line, sizeof line, fmt, a...);
      s += line;
    };
    using ull = unsigned long long;
    add("[torture %s] seed=0x%llx seconds=%.2f readers=%u\n", flavour.c_str(), (ull)seed, seconds,
        readers);
    add("[torture %s] reads=%llu nested=%llu lingers=%llu churn_threads=%llu churn_reads=%llu "
        "signals=%llu signal_reads=%llu forks=%llu\n",
        flavour.c_str(), (ull)reads, (ull)nested, (ull)lingers, (ull)churn_threads,
        (ull)churn_reads, (ull)signals, (ull)signal_reads, (ull)forks);
    add("[torture %s] updates=%llu gps=%llu calls=%llu retires=%llu callbacks=%llu polls=%llu "
        "barriers=%llu poisoned_objects=%llu shuffles=%llu max_gp_ms=%.1f\n",
        flavour.c_str(), (ull)updates, (ull)syncs, (ull)calls, (ull)retires, (ull)callbacks,
        (ull)polls, (ull)barriers, (ull)poisoned_objects, (ull)shuffles, max_gp_ms);
    if (writer_stalled())
      add("[torture %s] ??? Writer stall: one synchronize() took %.0f ms (updates=%llu in "
          "%.1f s)\n",
          flavour.c_str(), max_gp_ms, (ull)updates, seconds);
    add("[torture %s] Reader Pipe: ", flavour.c_str());
    for (unsigned i = 0; i <= kPipeLen; i++)
      add(" %llu", (ull)pipe[i]);
    add("  (last bucket = poisoned)%s\n", (pipe[2] + pipe[3] + pipe[4]) ? " !!!" : "");
    add("[torture %s] Reader Batch:", flavour.c_str());
    for (unsigned i = 0; i < kBatchLen; i++)
      add(" %llu", (ull)batch[i]);
    add("\n");
    add("[torture %s] errors=%llu (poisoned=%llu stale=%llu bad_magic=%llu torn=%llu "
        "gen_backwards=%llu in_reader=%llu poll_after_sync=%llu poll_stall=%llu barrier=%llu "
        "drain=%llu cb_in_reader=%llu fork=%llu) %s\n",
        flavour.c_str(), (ull)errors(), (ull)err_poisoned, (ull)err_stale, (ull)err_bad_magic,
        (ull)err_torn, (ull)err_gen_backwards, (ull)err_in_reader, (ull)err_poll_after_sync,
        (ull)err_poll_stall, (ull)err_barrier, (ull)err_drain, (ull)err_cb_in_reader, (ull)err_fork,
        errors() ? "FAILURE" : "SUCCESS");
    if (!first_error.empty())
      add("[torture %s] first writer-side error: %s\n", flavour.c_str(), first_error.c_str());
    return s;
  }
};

// ---------------------------------------------------------------------------------------
// The torture run for one domain.

template <sync::ReclaimingDomain D>
class Torture {
 public:
  Torture(D& d, std::string name, Options o) : d_(d), o_(std::move(o)) {
    rep_.flavour = std::move(name);
    rep_.seed = o_.seed;
    rep_.seconds = o_.seconds;
    rep_.readers = o_.readers;
  }
  Torture(const Torture&) = delete;
  Torture& operator=(const Torture&) = delete;

  Report run() {
    Obj* first = make_obj();
    cur_.store(first, std::memory_order_release);
    std::thread watchdog([this] { watchdog_loop(); });

    struct sigaction old_action {};
    if (o_.signal_readers) install_signal_handler(&old_action);
    ready_ = std::vector<std::atomic<bool>>(o_.readers);
    std::vector<std::thread> readers;
    for (unsigned i = 0; i < o_.readers; i++)
      readers.emplace_back([this, i] { reader_thread(o_.seed + 0x100 + i, i); });
    std::thread churner([this] { churn_thread(o_.seed + 0x200); });
    std::thread fake([this] { fake_writer_thread(o_.seed + 0x300); });
    std::thread writer([this] { writer_thread(o_.seed + 0x400); });
    std::vector<pthread_t> handles;
    for (auto& t : readers)
      handles.push_back(t.native_handle());
    std::thread shuffler([this, handles] { shuffler_thread(o_.seed + 0x500, handles); });
    std::thread signaller;
    if (o_.signal_readers)
      signaller = std::thread([this, handles] { signaller_thread(o_.seed + 0x600, handles); });

    const auto deadline = Clock::now() + std::chrono::duration<double>(o_.seconds);
    while (Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      if (o_.stop_after_errors &&
          live_bad_reads_.load(std::memory_order_relaxed) >= o_.stop_after_errors)
        break;
    }
    stop_.store(true, std::memory_order_relaxed);
    shuffler.join();  // before the readers: it names their threads
    if (signaller.joinable()) signaller.join();
    for (auto& t : readers)
      t.join();
    churner.join();
    fake.join();
    writer.join();
    if (o_.signal_readers) {
      sigaction(signal_number(), &old_action, nullptr);
      sig_target_.store(nullptr, std::memory_order_release);
    }

    // No reader is left: drain everything still in the pipe, and check it drains.
    drain();
    finished_.store(true);
    {
      std::lock_guard g(wd_mu_);
      wd_cv_.notify_all();
    }
    watchdog.join();
    {
      std::lock_guard g(q_mu_);
      for (Obj* o : quarantine_)
        delete o;
      quarantine_.clear();
    }
    fold_counters();
    if (o_.verbose) std::fputs(rep_.format().c_str(), stdout), std::fflush(stdout);
    return rep_;
  }

 private:
  // The published object. It derives from Callback so call() needs no allocation.
  struct Obj : sync::Callback {
    std::atomic<std::uint64_t> magic{kLiveMagic};
    std::atomic<std::uint64_t> gen{0};
    std::atomic<std::uint64_t> pipe{0};                 // grace periods ended since removal
    std::array<std::atomic<std::uint64_t>, 3> check{};  // functions of gen
    Torture* owner = nullptr;
  };
  static std::uint64_t check_word(std::uint64_t gen, unsigned i) {
    return (gen + 1) * 0x2545f4914f6cdd1dull + i;
  }

  struct ReaderStats {
    std::uint64_t reads = 0, nested = 0, lingers = 0;
    std::array<std::uint64_t, kPipeLen + 1> pipe{};
    std::array<std::uint64_t, kBatchLen> batch{};
    std::uint64_t poisoned = 0, stale = 0, bad_magic = 0, torn = 0, gen_backwards = 0,
                  in_reader = 0;
    std::uint64_t last_gen = 0;
  };

  Obj* make_obj() {
    auto* o = new Obj;
    std::uint64_t g = next_gen_++;
    o->owner = this;
    o->gen.store(g, std::memory_order_relaxed);
    for (unsigned i = 0; i < o->check.size(); i++)
      o->check[i].store(check_word(g, i), std::memory_order_relaxed);
    return o;
  }

  // --- Readers ---------------------------------------------------------------------------

  // Returns the age to record: 0..kPipeLen-1 from the pipe count, kPipeLen if poisoned.
  unsigned observe(const Obj* p, ReaderStats& s) {
    std::uint64_t m = p->magic.load(std::memory_order_relaxed);
    std::uint64_t g = p->gen.load(std::memory_order_relaxed);
    std::uint64_t age = p->pipe.load(std::memory_order_relaxed);
    bool poisoned = m == kPoisonMagic;
    bool consistent = true;
    for (unsigned i = 0; i < p->check.size(); i++) {
      std::uint64_t c = p->check[i].load(std::memory_order_relaxed);
      if (c == kPoisonWord)
        poisoned = true;
      else if (c != check_word(g, i))
        consistent = false;
    }
    if (poisoned) {
      s.poisoned++;
      note_bad_read();
      return kPipeLen;
    }
    if (m != kLiveMagic) {
      s.bad_magic++;
      note_bad_read();
      return kPipeLen;
    }
    if (!consistent) {
      s.torn++;
      note_bad_read();
    }
    if (age >= 2) {
      s.stale++;
      note_bad_read();
    }
    return static_cast<unsigned>(std::min<std::uint64_t>(age, kPipeLen - 1));
  }

  // A read the domain let go wrong: what stop_after_errors counts.
  void note_bad_read() { live_bad_reads_.fetch_add(1, std::memory_order_relaxed); }

  // One top-level read section, maybe with nested ones, lingering and yielding inside.
  void read_section(Rng& rng, ReaderStats& s) {
    sync::ReadToken outer = d_.read_lock();
    if (!d_.in_reader()) s.in_reader++;
    std::uint64_t gp0 = gp_count_.load(std::memory_order_relaxed);
    Obj* p = cur_.load(std::memory_order_acquire);
    std::uint64_t g = p->gen.load(std::memory_order_relaxed);
    if (g < s.last_gen) s.gen_backwards++;
    s.last_gen = g;
    unsigned age = observe(p, s);

    std::uint64_t r = rng.below(256);
    if (r < 2) {
      // Linger: a broken writer gets many updates done while we sleep holding p. Now and
      // then linger long (readers of every flavour may block).
      s.lingers++;
      std::this_thread::sleep_for(
          std::chrono::microseconds(rng.one_in(32) ? 1000 + rng.below(2000) : 5 + rng.below(100)));
    } else if (r < 24) {
      std::this_thread::yield();
    } else if (r < 40) {
      for (std::uint64_t i = rng.below(500); i > 0; i--)
        (void)cur_.load(std::memory_order_relaxed);
    }
    if (rng.one_in(8)) {
      unsigned depth = 1 + static_cast<unsigned>(rng.below(3));
      sync::ReadToken toks[3];
      for (unsigned i = 0; i < depth; i++) {
        toks[i] = d_.read_lock();
        s.nested++;
        Obj* q = cur_.load(std::memory_order_acquire);
        age = std::max(age, observe(q, s));
        if (rng.one_in(4)) std::this_thread::yield();
      }
      for (unsigned i = depth; i-- > 0;) {
        d_.read_unlock(toks[i]);
        if (!d_.in_reader()) s.in_reader++;  // still inside `outer`
      }
    }
    age = std::max(age, observe(p, s));  // p must still be intact after all that
    std::uint64_t gp1 = gp_count_.load(std::memory_order_relaxed);
    d_.read_unlock(outer);
    if (d_.in_reader()) s.in_reader++;
    s.reads++;
    s.pipe[age]++;
    s.batch[std::min<std::uint64_t>(gp1 - gp0, kBatchLen - 1)]++;
  }

  void merge(const ReaderStats& s, bool churn) {
    std::lock_guard g(stats_mu_);
    rep_.reads += s.reads;
    rep_.nested += s.nested;
    rep_.lingers += s.lingers;
    if (churn) rep_.churn_reads += s.reads;
    for (unsigned i = 0; i <= kPipeLen; i++)
      rep_.pipe[i] += s.pipe[i];
    for (unsigned i = 0; i < kBatchLen; i++)
      rep_.batch[i] += s.batch[i];
    rep_.err_poisoned += s.poisoned;
    rep_.err_stale += s.stale;
    rep_.err_bad_magic += s.bad_magic;
    rep_.err_torn += s.torn;
    rep_.err_gen_backwards += s.gen_backwards;
    rep_.err_in_reader += s.in_reader;
  }

  void reader_thread(std::uint64_t seed, unsigned idx) {
    Rng rng(seed);
    ReaderStats s;
    ReaderStats sig;       // written only by the signal handler on this thread
    read_section(rng, s);  // the first use of a domain in a thread may allocate
    if (o_.signal_readers) {
      tls_sig_stats_ = &sig;
      ready_[idx].store(true, std::memory_order_release);
    }
    while (!stop_.load(std::memory_order_relaxed))
      read_section(rng, s);
    if (o_.signal_readers) {
      sigset_t set;
      sigemptyset(&set);
      sigaddset(&set, signal_number());
      pthread_sigmask(SIG_BLOCK, &set, nullptr);  // a pending one stays pending: harmless
      tls_sig_stats_ = nullptr;
      merge(sig, false);
      std::lock_guard g(stats_mu_);
      rep_.signal_reads += sig.reads;
    }
    merge(s, false);
  }

  // --- Signal readers -------------------------------------------------------------------

  static int signal_number() { return SIGRTMIN + 5; }

  void install_signal_handler(struct sigaction* old) {
    sig_target_.store(this, std::memory_order_release);
    struct sigaction sa {};
    sa.sa_handler = &on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(signal_number(), &sa, old);
  }

  static void on_signal(int) {
    int saved_errno = errno;
    Torture* t = sig_target_.load(std::memory_order_acquire);
    if (ReaderStats* s = tls_sig_stats_; t && s) t->signal_section(*s);
    errno = saved_errno;
  }

  // A read section in a signal handler: no allocation, no lock, no sleep. It may interrupt
  // this thread's own section (nesting) or its read_lock()/read_unlock() halfway.
  void signal_section(ReaderStats& s) {
    sync::ReadToken outer = d_.read_lock();
    if (!d_.in_reader()) s.in_reader++;
    std::uint64_t gp0 = gp_count_.load(std::memory_order_relaxed);
    Obj* p = cur_.load(std::memory_order_acquire);
    unsigned age = p ? observe(p, s) : 0;
    sync::ReadToken inner = d_.read_lock();
    s.nested++;
    if (Obj* q = cur_.load(std::memory_order_acquire)) age = std::max(age, observe(q, s));
    d_.read_unlock(inner);
    if (p) age = std::max(age, observe(p, s));
    std::uint64_t gp1 = gp_count_.load(std::memory_order_relaxed);
    d_.read_unlock(outer);
    s.reads++;
    s.pipe[age]++;
    s.batch[std::min<std::uint64_t>(gp1 - gp0, kBatchLen - 1)]++;
  }

  void signaller_thread(std::uint64_t seed, std::vector<pthread_t> readers) {
    Rng rng(seed);
    std::uint64_t n = 0;
    while (!stop_.load(std::memory_order_relaxed) && !readers.empty()) {
      // A sleep lasts at least ~60 us (timer slack), so send a burst per wake-up.
      std::this_thread::sleep_for(std::chrono::microseconds(1 + rng.below(20)));
      for (unsigned k = 0; k < 4; k++) {
        unsigned i = static_cast<unsigned>(rng.below(readers.size()));
        if (!ready_[i].load(std::memory_order_acquire)) continue;
        if (pthread_kill(readers[i], signal_number()) == 0) n++;
      }
    }
    std::lock_guard g(stats_mu_);
    rep_.signals += n;
  }

  // Threads that do a few sections and exit, over and over: registration and exit paths.
  void churn_thread(std::uint64_t seed) {
    Rng rng(seed);
    std::uint64_t n = 0;
    while (!stop_.load(std::memory_order_relaxed)) {
      unsigned k = 1 + static_cast<unsigned>(rng.below(2));
      std::vector<std::thread> ts;
      for (unsigned i = 0; i < k; i++) {
        std::uint64_t sections = 1 + rng.below(32);
        std::uint64_t tseed = rng.next();
        ts.emplace_back([this, sections, tseed] {
          Rng r(tseed);
          ReaderStats s;
          for (std::uint64_t j = 0; j < sections && !stop_.load(std::memory_order_relaxed); j++)
            read_section(r, s);
          merge(s, true);
        });
      }
      // One failed child says it all; more would only cost their 5 s timeouts.
      if (o_.fork_children && rng.one_in(4) && fork_errors_.load() == 0) fork_and_check();
      for (auto& t : ts)
        t.join();
      n += k;
      std::this_thread::sleep_for(std::chrono::microseconds(rng.below(500)));
    }
    std::lock_guard g(stats_mu_);
    rep_.churn_threads += n;
  }

  // --- Fork children --------------------------------------------------------------------

  void fork_and_check() {
    pid_t pid = fork();
    if (pid < 0) return;
    if (pid == 0) _exit(fork_child());
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    forks_.fetch_add(1, std::memory_order_relaxed);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return;
    fork_errors_.fetch_add(1, std::memory_order_relaxed);
    static const char* const kWhat[] = {
        "ok",
        "in_reader() wrong in a fork child",
        "a fork child saw a bad object",
        "barrier() in a fork child returned before its callback ran",
        "a fork child hung for 5 s in read_lock()/read_unlock()",
        "a fork child hung for 5 s in synchronize()",
        "a fork child hung for 5 s in call()",
        "a fork child hung for 5 s in barrier()",
        "a fork child hung for 5 s in start_poll()/poll()",
    };
    if (WIFEXITED(status) && static_cast<std::size_t>(WEXITSTATUS(status)) < std::size(kWhat))
      report_error(kWhat[WEXITSTATUS(status)]);
    else
      report_error("a fork child died");
  }

  // The step a fork child is in, so that its alarm says where it hung.
  static inline volatile sig_atomic_t fork_child_step_ = 0;
  static void on_fork_child_alarm(int) { _exit(4 + fork_child_step_); }

  // In the child: one thread, a copy of everything, other threads' locks possibly held.
  // Touches only the domain and atomics (the callbacks inherited from the parent take no
  // lock here: forked_child_). Exits with a kWhat index.
  int fork_child() {
    forked_child_ = true;
    signal(SIGALRM, &on_fork_child_alarm);
    alarm(5);  // a hang exits with 4 + the step it hung in
    fork_child_step_ = 0;
    ReaderStats s;
    for (int i = 0; i < 64; i++) {
      sync::ReadToken t = d_.read_lock();
      if (!d_.in_reader()) return 1;
      if (Obj* p = cur_.load(std::memory_order_acquire)) observe(p, s);
      d_.read_unlock(t);
      if (d_.in_reader()) return 1;
    }
    if (s.poisoned + s.stale + s.bad_magic + s.torn) return 2;
    fork_child_step_ = 1;
    d_.synchronize();
    struct Flag : sync::Callback {
      std::atomic<bool> ran{false};
    } cb;
    cb.fn = [](sync::Callback* c) { static_cast<Flag*>(c)->ran.store(true); };
    fork_child_step_ = 2;
    d_.call(&cb);
    fork_child_step_ = 3;
    d_.barrier();
    if (!cb.ran.load()) return 3;
    fork_child_step_ = 4;
    sync::GpCookie c = d_.start_poll();
    while (!d_.poll(c))
      std::this_thread::yield();  // bounded by the alarm
    return 0;
  }

  // --- Writer ---------------------------------------------------------------------------

  enum class Mode { kSync, kCall, kRetire, kPoll };
  struct Polled {
    Obj* obj;
    sync::GpCookie cookie;
  };

  // Poison, then quarantine, then (maybe) free: a reader that wrongly still holds the
  // object sees poison, not reused memory.
  void poison(Obj* o) {
    o->magic.store(kPoisonMagic, std::memory_order_relaxed);
    for (auto& c : o->check)
      c.store(kPoisonWord, std::memory_order_relaxed);
    if (forked_child_) return;  // q_mu_ may be held by a thread that is gone: leak
    Obj* victim = nullptr;
    {
      std::lock_guard g(q_mu_);
      quarantine_.push_back(o);
      poisoned_objects_++;
      if (o_.free_during_run && quarantine_.size() > o_.quarantine) {
        victim = quarantine_.front();
        quarantine_.pop_front();
      }
    }
    delete victim;
  }

  // One grace period ended for o (it was retired before that grace period began).
  void age(Obj* o) {
    if (o->pipe.fetch_add(1, std::memory_order_relaxed) + 1 >= kPipeLen) poison(o);
  }

  // call() path: each stage is one grace period; re-queue until the end of the pipe.
  static void on_callback(sync::Callback* cb) {
    Obj* o = static_cast<Obj*>(cb);
    Torture* t = o->owner;
    t->check_not_in_reader();
    std::uint64_t prev = o->pipe.fetch_add(1, std::memory_order_relaxed);
    t->callbacks_.fetch_add(1, std::memory_order_relaxed);
    if (prev == 0) t->first_stage_runs_.fetch_add(1, std::memory_order_release);
    if (prev + 1 >= kPipeLen) {
      t->poison(o);
      t->in_flight_.fetch_sub(1, std::memory_order_release);
    } else {
      t->calls_.fetch_add(1, std::memory_order_relaxed);
      t->d_.call(o);
    }
  }

  // retire() path: one grace period, then the deleter ages and poisons.
  struct Reclaimer {
    void operator()(Obj* o) const {
      Torture* t = o->owner;
      t->check_not_in_reader();
      t->callbacks_.fetch_add(1, std::memory_order_relaxed);
      if (o->pipe.fetch_add(1, std::memory_order_relaxed) == 0)
        t->first_stage_runs_.fetch_add(1, std::memory_order_release);
      t->poison(o);
      t->in_flight_.fetch_sub(1, std::memory_order_release);
    }
  };

  // domain.h: callbacks never run inside the caller's read section. The writer queues
  // some of them from inside one, so a call() that runs callbacks in place is caught here.
  void check_not_in_reader() {
    if (d_.in_reader()) {
      cb_in_reader_.fetch_add(1, std::memory_order_relaxed);
      report_error("a callback ran inside a read section");
    }
  }

  void timed_synchronize() {
    auto t0 = Clock::now();
    d_.synchronize();
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0).count();
    std::uint64_t prev = max_gp_us_.load(std::memory_order_relaxed);
    while (static_cast<std::uint64_t>(us) > prev &&
           !max_gp_us_.compare_exchange_weak(prev, static_cast<std::uint64_t>(us))) {
    }
    gp_count_.fetch_add(1, std::memory_order_relaxed);
    syncs_.fetch_add(1, std::memory_order_relaxed);
  }

  void writer_synchronize() {
    writer_state("synchronize");
    timed_synchronize();
  }
  // What the writer is doing, for the stall report (rcutorture's writer state).
  void writer_state(const char* what) { writer_state_.store(what, std::memory_order_relaxed); }

  // Objects retired in kSync mode age by one per writer synchronize(); poll-mode objects
  // taken before it must poll done after it.
  void sync_and_age() {
    std::size_t polled_before = polled_.size();
    writer_synchronize();
    for (std::size_t i = 0; i < polled_before; i++) {
      if (!d_.poll(polled_[i].cookie)) {
        report_error("poll(cookie) false after a later synchronize()");
        err_poll_after_sync_++;
      }
    }
    for (Obj* o : sync_pipe_)
      age(o);
    std::erase_if(sync_pipe_,
                  [](Obj* o) { return o->pipe.load(std::memory_order_relaxed) >= kPipeLen; });
  }

  void advance_polls() {
    for (auto& e : polled_) {
      if (e.obj && d_.poll(e.cookie)) {
        polls_.fetch_add(1, std::memory_order_relaxed);
        std::uint64_t p = e.obj->pipe.load(std::memory_order_relaxed);
        age(e.obj);
        if (p + 1 >= kPipeLen)
          e.obj = nullptr;
        else
          e.cookie = d_.start_poll();
      }
    }
    std::erase_if(polled_, [](const Polled& e) { return e.obj == nullptr; });
  }

  void barrier_check() {
    std::uint64_t queued = first_stage_queued_;  // only the writer queues first stages
    writer_state("barrier");
    d_.barrier();
    barriers_.fetch_add(1, std::memory_order_relaxed);
    if (first_stage_runs_.load(std::memory_order_acquire) < queued) {
      report_error("barrier() returned before a callback queued earlier had run");
      err_barrier_++;
    }
  }

  void retire_old(Obj* old, Mode m, bool in_section) {
    // call() and retire() are legal inside a read section; synchronize() is not.
    std::optional<sync::ReadGuard<D>> guard;
    if (in_section && (m == Mode::kCall || m == Mode::kRetire)) guard.emplace(d_);
    switch (m) {
      case Mode::kSync:
        sync_pipe_.push_back(old);
        sync_and_age();
        break;
      case Mode::kCall:
        writer_state("call");
        old->fn = &on_callback;
        in_flight_.fetch_add(1, std::memory_order_relaxed);
        first_stage_queued_++;
        calls_.fetch_add(1, std::memory_order_relaxed);
        d_.call(old);
        break;
      case Mode::kRetire:
        writer_state("retire");
        in_flight_.fetch_add(1, std::memory_order_relaxed);
        first_stage_queued_++;
        retires_.fetch_add(1, std::memory_order_relaxed);
        sync::retire(d_, old, Reclaimer{});
        break;
      case Mode::kPoll:
        writer_state("start_poll");
        polled_.push_back({old, d_.start_poll()});
        break;
    }
  }

  void writer_thread(std::uint64_t seed) {
    Rng rng(seed);
    while (!stop_.load(std::memory_order_relaxed)) {
      Obj* n = make_obj();
      Obj* old = cur_.load(std::memory_order_relaxed);
      cur_.store(n, std::memory_order_release);
      updates_.fetch_add(1, std::memory_order_relaxed);
      retire_old(old, static_cast<Mode>(rng.below(4)), rng.one_in(4));
      advance_polls();
      // Bound what is in flight: deferred callbacks and unfinished polls.
      if (in_flight_.load(std::memory_order_relaxed) > 1024 || rng.one_in(64)) barrier_check();
      if (polled_.size() > 64) sync_and_age();
      std::uint64_t r = rng.below(16);
      if (r == 0)
        std::this_thread::sleep_for(std::chrono::microseconds(1 + rng.below(50)));
      else if (r < 5)
        std::this_thread::yield();
    }
  }

  // Concurrent grace-period users that do not update (rcutorture's fake writers): they
  // make synchronize() calls overlap, and check polling and barrier on their own.
  void fake_writer_thread(std::uint64_t seed) {
    Rng rng(seed);
    while (!stop_.load(std::memory_order_relaxed)) {
      switch (rng.below(8)) {
        case 0:
        case 1:
        case 2:
        case 3:
          timed_synchronize();
          break;
        case 4:
        case 5: {
          sync::GpCookie c = d_.start_poll();
          if (!wait_poll(c)) {
            report_error("poll(start_poll()) never became true");
            fake_poll_stall_.fetch_add(1, std::memory_order_relaxed);
          }
          break;
        }
        case 6:
          d_.barrier();
          barriers_.fetch_add(1, std::memory_order_relaxed);
          break;
        case 7: {
          sync::GpCookie c = d_.start_poll();
          d_.synchronize();
          syncs_.fetch_add(1, std::memory_order_relaxed);
          if (!d_.poll(c)) {
            report_error("poll(cookie) false after a later synchronize()");
            fake_poll_after_sync_.fetch_add(1, std::memory_order_relaxed);
          }
          break;
        }
      }
      std::this_thread::sleep_for(std::chrono::microseconds(rng.below(200)));
    }
  }

  // rcutorture's shuffler: move readers between CPUs, so that sections begin on one CPU
  // and end on another (per-CPU counters must still balance).
  void shuffler_thread(std::uint64_t seed, std::vector<pthread_t> readers) {
    Rng rng(seed);
    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return;
    std::vector<int> cpus;
    for (int c = 0; c < CPU_SETSIZE; c++)
      if (CPU_ISSET(c, &allowed)) cpus.push_back(c);
    std::uint64_t n = 0;
    while (!stop_.load(std::memory_order_relaxed)) {
      std::this_thread::sleep_for(std::chrono::microseconds(500 + rng.below(2000)));
      if (readers.empty() || cpus.size() < 2) continue;
      pthread_t t = readers[rng.below(readers.size())];
      cpu_set_t set;
      if (rng.one_in(3)) {
        set = allowed;  // free again
      } else {
        CPU_ZERO(&set);
        CPU_SET(cpus[rng.below(cpus.size())], &set);
      }
      if (pthread_setaffinity_np(t, sizeof set, &set) == 0) n++;
    }
    for (pthread_t t : readers)
      pthread_setaffinity_np(t, sizeof allowed, &allowed);
    std::lock_guard g(stats_mu_);
    rep_.shuffles += n;
  }

  bool wait_poll(sync::GpCookie c) {
    const auto limit = Clock::now() + std::chrono::duration<double>(o_.stall_seconds / 2);
    unsigned spins = 0;
    while (!d_.poll(c)) {
      if (Clock::now() > limit) return false;
      if (++spins < 64)
        std::this_thread::yield();
      else
        std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    polls_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }

  // After every reader has exited: the current object and everything in the pipe must be
  // reclaimed, polls must complete and callbacks must drain.
  void drain() {
    writer_state("drain: synchronize");
    Obj* last = cur_.exchange(nullptr, std::memory_order_acq_rel);
    sync_pipe_.push_back(last);
    while (!sync_pipe_.empty()) {
      sync_and_age();
      progress_.fetch_add(1, std::memory_order_relaxed);
    }
    for (auto& e : polled_) {
      while (e.obj) {
        if (!wait_poll(e.cookie)) {
          report_error("poll(start_poll()) never became true while draining");
          err_drain_++;
          break;
        }
        std::uint64_t p = e.obj->pipe.load(std::memory_order_relaxed);
        age(e.obj);
        if (p + 1 >= kPipeLen)
          e.obj = nullptr;
        else
          e.cookie = d_.start_poll();
        progress_.fetch_add(1, std::memory_order_relaxed);
      }
    }
    polled_.clear();
    writer_state("drain: barrier");
    // Callbacks re-queue themselves, so one barrier is not enough; each barrier must at
    // least finish one stage of each, so kPipeLen + 1 barriers drain them all.
    for (unsigned i = 0; i < kPipeLen + 1 && in_flight_.load(std::memory_order_acquire) > 0; i++) {
      barrier_check();
      progress_.fetch_add(1, std::memory_order_relaxed);
    }
    if (std::uint64_t n = in_flight_.load(std::memory_order_acquire)) {
      char msg[128];
      std::snprintf(msg, sizeof msg, "%llu callbacks still pending after %u barriers",
                    static_cast<unsigned long long>(n), kPipeLen + 1);
      report_error(msg);
      err_drain_++;
      // Do not free what a callback may still touch.
      std::lock_guard g(q_mu_);
      quarantine_.clear();
    }
    d_.barrier();  // the last callbacks have returned, not only decremented in_flight_
  }

  void report_error(const char* what) {
    if (forked_child_) return;  // stats_mu_ may be held by a thread that is gone
    std::lock_guard g(stats_mu_);
    if (first_error_.empty()) first_error_ = what;
  }

  void watchdog_loop() {
    std::uint64_t last = ~0ull;
    auto last_change = Clock::now();
    std::unique_lock lk(wd_mu_);
    while (!finished_.load()) {
      wd_cv_.wait_for(lk, std::chrono::milliseconds(100));
      std::uint64_t p =
          updates_.load(std::memory_order_relaxed) + progress_.load(std::memory_order_relaxed);
      if (p != last) {
        last = p;
        last_change = Clock::now();
      } else if (!finished_.load() &&
                 Clock::now() - last_change > std::chrono::duration<double>(o_.stall_seconds)) {
        std::fprintf(stderr,
                     "[torture %s] STALL: no writer progress for %.0f s, writer in %s "
                     "(seed=0x%llx, updates=%llu syncs=%llu callbacks=%llu in_flight=%llu "
                     "signals=%s, stopping=%d); aborting\n",
                     rep_.flavour.c_str(), o_.stall_seconds, writer_state_.load(),
                     static_cast<unsigned long long>(o_.seed),
                     static_cast<unsigned long long>(updates_.load()),
                     static_cast<unsigned long long>(syncs_.load()),
                     static_cast<unsigned long long>(callbacks_.load()),
                     static_cast<unsigned long long>(in_flight_.load()),
                     o_.signal_readers ? "on" : "off", stop_.load() ? 1 : 0);
        std::fflush(stderr);
        std::abort();
      }
    }
  }

  void fold_counters() {
    std::lock_guard g(stats_mu_);
    rep_.updates = updates_.load();
    rep_.syncs = syncs_.load();
    rep_.calls = calls_.load();
    rep_.retires = retires_.load();
    rep_.callbacks = callbacks_.load();
    rep_.polls = polls_.load();
    rep_.barriers = barriers_.load();
    rep_.poisoned_objects = poisoned_objects_;
    rep_.err_poll_after_sync = err_poll_after_sync_ + fake_poll_after_sync_.load();
    rep_.err_poll_stall = fake_poll_stall_.load();
    rep_.err_barrier = err_barrier_;
    rep_.err_drain = err_drain_;
    rep_.err_cb_in_reader = cb_in_reader_.load();
    rep_.forks = forks_.load();
    rep_.err_fork = fork_errors_.load();
    rep_.max_gp_ms = static_cast<double>(max_gp_us_.load()) / 1000.0;
    rep_.first_error = first_error_;
  }

  D& d_;
  Options o_;
  Report rep_;

  alignas(64) std::atomic<Obj*> cur_{nullptr};
  alignas(64) std::atomic<bool> stop_{false};
  std::atomic<bool> finished_{false};
  alignas(64) std::atomic<std::uint64_t> gp_count_{0};
  alignas(64) std::atomic<std::uint64_t> live_bad_reads_{0};

  // Writer-thread state (and drain(), which runs after the writer has exited).
  std::uint64_t next_gen_ = 1;
  std::vector<Obj*> sync_pipe_;
  std::vector<Polled> polled_;
  std::uint64_t first_stage_queued_ = 0;
  std::uint64_t err_poll_after_sync_ = 0, err_barrier_ = 0, err_drain_ = 0;

  alignas(64) std::atomic<std::uint64_t> updates_{0}, progress_{0}, syncs_{0}, calls_{0},
      retires_{0}, callbacks_{0}, polls_{0}, barriers_{0};
  std::atomic<std::uint64_t> in_flight_{0}, first_stage_runs_{0};
  std::atomic<std::uint64_t> fake_poll_after_sync_{0}, fake_poll_stall_{0};
  std::atomic<std::uint64_t> cb_in_reader_{0}, max_gp_us_{0};
  std::atomic<const char*> writer_state_{"start"};
  std::atomic<std::uint64_t> forks_{0}, fork_errors_{0};
  bool forked_child_ = false;  // set only in a fork child, before it starts any thread

  std::mutex q_mu_;  // quarantine; leaf lock
  std::deque<Obj*> quarantine_;
  std::uint64_t poisoned_objects_ = 0;

  std::mutex stats_mu_;  // report merging; leaf lock
  std::string first_error_;

  std::mutex wd_mu_;
  std::condition_variable wd_cv_;

  std::vector<std::atomic<bool>> ready_;  // reader i may be signalled
  static inline std::atomic<Torture*> sig_target_{nullptr};
  static inline thread_local ReaderStats* tls_sig_stats_ = nullptr;
};

template <sync::ReclaimingDomain D>
Report run_torture(D& d, std::string name, const Options& o) {
  return Torture<D>(d, std::move(name), o).run();
}

// ---------------------------------------------------------------------------------------
// Reference flavours, defined here so the framework is tested without any real domain.
//
// ReferenceDomain<0> is trivially correct: a reader/writer lock behind a turnstile
// (readers pass a mutex the writer holds while it waits, so readers cannot starve it),
// with nesting counted per thread so only the outermost section takes the lock.
// synchronize() takes the lock exclusively once: every section that began before has
// ended. call()/barrier()/polling use the shared Deferred worker.
//
// The Break bits make it wrong in one way each, to prove each path of the torture run
// is checked:
//   kBreakSync    synchronize() returns at once (the grace period counter still moves)
//   kBreakCall    call() runs the callback at once, in the caller
//   kBreakPoll    start_poll() returns a cookie that is already done
//   kBreakBarrier barrier() returns at once
// BrokenDomain (kBreakSync | kBreakCall) is the flavour in the table that must be caught.

enum Break : unsigned {
  kBreakNone = 0,
  kBreakSync = 1,
  kBreakCall = 2,
  kBreakPoll = 4,
  kBreakBarrier = 8,
};

template <unsigned Breaks>
class ReferenceDomain {
 public:
  ReferenceDomain() : deferred_(this, &real_gp_thunk, seq_, "torture-ref") {}
  ReferenceDomain(const ReferenceDomain&) = delete;
  ReferenceDomain& operator=(const ReferenceDomain&) = delete;

  sync::ReadToken read_lock() noexcept {
    if (depth_++ == 0) {
      std::lock_guard g(turnstile_);
      rw_.lock_shared();
    }
    return {};
  }
  void read_unlock(sync::ReadToken) noexcept {
    if (--depth_ == 0) rw_.unlock_shared();
  }
  bool in_reader() const noexcept { return depth_ > 0; }

  void synchronize() {
    if constexpr ((Breaks & kBreakSync) != 0) {
      std::lock_guard g(gp_mu_);
      seq_.start();
      seq_.end();
    } else {
      real_gp();
    }
  }
  void call(sync::Callback* cb) {
    if constexpr ((Breaks & kBreakCall) != 0)
      cb->fn(cb);
    else
      deferred_.call(cb);
  }
  void barrier() {
    if constexpr ((Breaks & kBreakBarrier) == 0) deferred_.barrier();
  }
  sync::GpCookie start_poll() {
    if constexpr ((Breaks & kBreakPoll) != 0) {
      sync::GpCookie c = seq_.snap();
      std::lock_guard g(gp_mu_);
      while (!seq_.done(c))
        seq_.start(), seq_.end();
      return c;
    } else {
      return deferred_.start_poll();
    }
  }
  bool poll(sync::GpCookie c) const noexcept { return seq_.done(c); }

 private:
  void real_gp() {
    std::lock_guard g(gp_mu_);
    seq_.start();
    {
      std::lock_guard t(turnstile_);
      rw_.lock();
      rw_.unlock();
    }
    seq_.end();
  }
  static void real_gp_thunk(void* self) { static_cast<ReferenceDomain*>(self)->real_gp(); }

  static inline thread_local int depth_ = 0;
  std::mutex gp_mu_;  // lock order: gp_mu_ -> turnstile_ -> rw_
  std::mutex turnstile_;
  std::shared_mutex rw_;
  sync::GpSequence seq_;
  sync::Deferred deferred_;  // last: destroyed first, while the lock still exists
};

using SharedMutexDomain = ReferenceDomain<kBreakNone>;
using BrokenDomain = ReferenceDomain<kBreakSync | kBreakCall>;

static_assert(sync::ReclaimingDomain<SharedMutexDomain>);
static_assert(sync::ReclaimingDomain<BrokenDomain>);

}  // namespace hp::torture
