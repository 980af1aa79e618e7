// The torture run over the table of flavours (STYLE.md item 11): every domain that
// implements ReclaimingDomain, plus a deliberately broken one that must be caught.
// Duration: HOTPROBE_STRESS_SECONDS per flavour (default 3); seed: HOTPROBE_TORTURE_SEED.
// See docs/design/torture.md.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <ostream>
#include <string>

#include "torture.h"

// The real flavours, each as soon as its header exists (they land independently).
#if __has_include("sync/tasks_trace.h")
#include "sync/tasks_trace.h"
#define HP_TORTURE_HAVE_TASKS_TRACE 1
#endif
#if __has_include("sync/srcu.h")
#include "sync/srcu.h"
#define HP_TORTURE_HAVE_SRCU 1
#endif
#if __has_include("sync/percpu_rwsem.h")
#include "sync/percpu_rwsem.h"
#define HP_TORTURE_HAVE_PERCPU_RWSEM 1
#endif
#if __has_include("sync/baselines.h")
#include "sync/baselines.h"
#define HP_TORTURE_HAVE_BASELINES 1
#endif

namespace hp::torture {
namespace {

enum class Expect { kPass, kCaught };

// What a row adds to the plain run (torture.h): kSignals, read sections from a signal
// handler that interrupts the readers (Options::signal_readers), for domains whose read
// side is documented as async-signal-safe; kFork, children forked mid-run must find a
// working domain (Options::fork_children), for domains that document fork support. The
// rows of one domain split its time budget.
enum class Extra { kNone, kSignals, kFork };

struct Flavour {
  const char* name;
  Expect expect;
  Extra extra;
  double share;  // of HOTPROBE_STRESS_SECONDS
  Report (*run)(const Options&);
};

// So that gtest (and ctest's test names) show the flavour, not its bytes.
void PrintTo(const Flavour& f, std::ostream* os) {
  *os << f.name;
}

template <class D>
Report run_owned(const char* name, const Options& o) {
  D d;
  return run_torture(d, name, o);
}

#define HP_OWNED(D, name) [](const Options& o) { return run_owned<D>(name, o); }

// The table. Add a flavour here when its domain lands; keep one that fails in the table
// (and tell its owner) rather than removing it.
const Flavour kFlavours[] = {
    {"reference_shared_mutex", Expect::kPass, Extra::kNone, 1.0,
     HP_OWNED(SharedMutexDomain, "reference_shared_mutex")},
    // Its read side takes a mutex (not async-signal-safe): no signal readers.
    {"broken", Expect::kCaught, Extra::kNone, 1.0, HP_OWNED(BrokenDomain, "broken")},
#ifdef HP_TORTURE_HAVE_TASKS_TRACE
    // Process-wide and immortal: tortured in place.
    {"tasks_trace", Expect::kPass, Extra::kNone, 0.5,
     [](const Options& o) { return run_torture(sync::tasks_trace(), "tasks_trace", o); }},
    {"tasks_trace_signals", Expect::kPass, Extra::kSignals, 0.25,
     [](const Options& o) { return run_torture(sync::tasks_trace(), "tasks_trace_signals", o); }},
    {"tasks_trace_fork", Expect::kPass, Extra::kFork, 0.25,
     [](const Options& o) { return run_torture(sync::tasks_trace(), "tasks_trace_fork", o); }},
#endif
#ifdef HP_TORTURE_HAVE_SRCU
    {"srcu", Expect::kPass, Extra::kNone, 0.5, HP_OWNED(sync::Srcu, "srcu")},
    {"srcu_signals", Expect::kPass, Extra::kSignals, 0.25, HP_OWNED(sync::Srcu, "srcu_signals")},
    {"srcu_fork", Expect::kPass, Extra::kFork, 0.25, HP_OWNED(sync::Srcu, "srcu_fork")},
    {"srcu_fast", Expect::kPass, Extra::kNone, 0.5, HP_OWNED(sync::SrcuFast, "srcu_fast")},
    {"srcu_fast_signals", Expect::kPass, Extra::kSignals, 0.25,
     HP_OWNED(sync::SrcuFast, "srcu_fast_signals")},
    {"srcu_fast_fork", Expect::kPass, Extra::kFork, 0.25,
     HP_OWNED(sync::SrcuFast, "srcu_fast_fork")},
#endif
#ifdef HP_TORTURE_HAVE_PERCPU_RWSEM
    {"percpu_rwsem", Expect::kPass, Extra::kNone, 2.0 / 3,
     HP_OWNED(sync::PercpuRwsem, "percpu_rwsem")},
    {"percpu_rwsem_signals", Expect::kPass, Extra::kSignals, 1.0 / 3,
     HP_OWNED(sync::PercpuRwsem, "percpu_rwsem_signals")},
#endif
#ifdef HP_TORTURE_HAVE_BASELINES
    {"refcount", Expect::kPass, Extra::kNone, 2.0 / 3, HP_OWNED(sync::RefcountDomain, "refcount")},
    {"refcount_signals", Expect::kPass, Extra::kSignals, 1.0 / 3,
     HP_OWNED(sync::RefcountDomain, "refcount_signals")},
    // std::shared_mutex is not async-signal-safe: no signal row.
    {"rwlock", Expect::kPass, Extra::kNone, 1.0, HP_OWNED(sync::RwlockDomain, "rwlock")},
#endif
};

#undef HP_OWNED

// Each flavour runs in a forked child, so that a flavour that hangs (the watchdog aborts
// it) or crashes fails its own test and not the rest of the table, and so that the
// process-wide tasks_trace() domain starts fresh. The test process itself stays
// single-threaded, which makes the fork safe. The child prints its report and sends back
// the numbers the verdict needs.
struct Outcome {
  bool completed = false;  // false: the child died (stall abort, crash)
  std::string how;         // how it died
  std::uint64_t errors = 0, bad_reads = 0, reads = 0, updates = 0, seed = 0;
};

Outcome run_in_child(const Flavour& f, const Options& o) {
  int fds[2];
  if (pipe(fds) != 0) return {false, std::string("pipe: ") + std::strerror(errno)};
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) return {false, std::string("fork: ") + std::strerror(errno)};
  if (pid == 0) {
    close(fds[0]);
    Report r = f.run(o);
    std::uint64_t out[5] = {r.errors(), r.bad_reads(), r.reads, r.updates, r.seed};
    ssize_t n = write(fds[1], out, sizeof out);
    std::fflush(stdout);
    _exit(n == static_cast<ssize_t>(sizeof out) ? 0 : 3);
  }
  close(fds[1]);
  std::uint64_t in[5] = {};
  std::size_t got = 0;
  while (got < sizeof in) {
    ssize_t n = read(fds[0], reinterpret_cast<char*>(in) + got, sizeof in - got);
    if (n > 0)
      got += static_cast<std::size_t>(n);
    else if (n == 0 || errno != EINTR)
      break;
  }
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  Outcome out;
  if (WIFSIGNALED(status)) {
    out.how = std::string("killed by signal ") + strsignal(WTERMSIG(status)) +
              " (a STALL line above means the watchdog aborted a hang)";
  } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || got != sizeof in) {
    out.how = "exited with status " + std::to_string(WEXITSTATUS(status));
  } else {
    out.completed = true;
    out.errors = in[0];
    out.bad_reads = in[1];
    out.reads = in[2];
    out.updates = in[3];
    out.seed = in[4];
  }
  return out;
}

class TortureTest : public ::testing::TestWithParam<Flavour> {};

TEST_P(TortureTest, Run) {
  const Flavour& f = GetParam();
  Options o = default_options();
  o.signal_readers = f.extra == Extra::kSignals;
  o.fork_children = f.extra == Extra::kFork;
#if defined(HOTPROBE_TSAN)
  if (o.fork_children)
    GTEST_SKIP() << "TSan kills a child of a multithreaded process that starts a thread "
                    "(die_after_fork), and the child's Deferred worker is one";
#elif defined(HOTPROBE_ASAN)
  // g++ 12's libasan does not hold its allocator locks across fork(): a child whose parent
  // had a thread inside malloc deadlocks in ASan's allocator when it starts a thread (seen:
  // the Deferred worker, in pthread_getattr_np -> realloc). Not the domain's fault.
  if (o.fork_children)
    GTEST_SKIP() << "ASan's allocator (g++ 12) is not fork-safe in a multithreaded process";
#endif
  o.seconds *= f.share;
  if (f.expect == Expect::kCaught) {
    // Expected to fail: keep every poisoned object alive until the readers are gone (a
    // reader holding one must see poison, not freed memory), and stop once it is caught.
    o.free_during_run = false;
    o.stop_after_errors = 1000;
  }
  Outcome r = run_in_child(f, o);
  ASSERT_TRUE(r.completed) << "flavour " << f.name << ": the torture run " << r.how
                           << "; rerun with HOTPROBE_TORTURE_SEED=0x" << std::hex << o.seed;
  if (f.expect == Expect::kPass) {
    EXPECT_EQ(r.errors, 0u) << "flavour " << f.name << " failed the torture test (report above); "
                            << "rerun with HOTPROBE_TORTURE_SEED=0x" << std::hex << r.seed;
    EXPECT_GT(r.reads, 0u);
    EXPECT_GT(r.updates, 0u);
  } else {
    // The proof that the test can fail: a domain whose synchronize() does not wait and
    // whose call() runs at once must produce poisoned or too-stale reads (and must not
    // crash the run: the child completed).
    EXPECT_GT(r.bad_reads, 0u) << "the torture test did not catch flavour " << f.name << " (seed 0x"
                               << std::hex << r.seed << ", report above)";
  }
}

INSTANTIATE_TEST_SUITE_P(Flavours, TortureTest, ::testing::ValuesIn(kFlavours),
                         [](const ::testing::TestParamInfo<Flavour>& i) {
                           return std::string(i.param.name);
                         });

}  // namespace
}  // namespace hp::torture
