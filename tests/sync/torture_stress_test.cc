// The torture run over the table of flavours (STYLE.md item 11): every domain that
// implements ReclaimingDomain, plus a deliberately broken one that must be caught.
// Duration: HOTPROBE_STRESS_SECONDS per flavour (default 3); seed: HOTPROBE_TORTURE_SEED.
// See docs/design/torture.md.
#include <gtest/gtest.h>

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

struct Flavour {
  const char* name;
  Expect expect;
  Report (*run)(const Options&);
};

// So that gtest (and ctest's test names) show the flavour, not its bytes.
void PrintTo(const Flavour& f, std::ostream* os) { *os << f.name; }

template <class D>
Report run_owned(const char* name, const Options& o) {
  D d;
  return run_torture(d, name, o);
}

// The table. Add a flavour here when its domain lands; keep one that fails in the table
// (and tell its owner) rather than removing it.
const Flavour kFlavours[] = {
    {"reference_shared_mutex", Expect::kPass,
     [](const Options& o) { return run_owned<SharedMutexDomain>("reference_shared_mutex", o); }},
    {"broken", Expect::kCaught,
     [](const Options& o) { return run_owned<BrokenDomain>("broken", o); }},
#ifdef HP_TORTURE_HAVE_TASKS_TRACE
    // Process-wide and immortal: tortured in place.
    {"tasks_trace", Expect::kPass,
     [](const Options& o) { return run_torture(sync::tasks_trace(), "tasks_trace", o); }},
#endif
#ifdef HP_TORTURE_HAVE_SRCU
    {"srcu", Expect::kPass, [](const Options& o) { return run_owned<sync::Srcu>("srcu", o); }},
    {"srcu_fast", Expect::kPass,
     [](const Options& o) { return run_owned<sync::SrcuFast>("srcu_fast", o); }},
#endif
#ifdef HP_TORTURE_HAVE_PERCPU_RWSEM
    {"percpu_rwsem", Expect::kPass,
     [](const Options& o) { return run_owned<sync::PercpuRwsem>("percpu_rwsem", o); }},
#endif
#ifdef HP_TORTURE_HAVE_BASELINES
    {"refcount", Expect::kPass,
     [](const Options& o) { return run_owned<sync::RefcountDomain>("refcount", o); }},
    {"rwlock", Expect::kPass,
     [](const Options& o) { return run_owned<sync::RwlockDomain>("rwlock", o); }},
#endif
};

class TortureTest : public ::testing::TestWithParam<Flavour> {};

TEST_P(TortureTest, Run) {
  const Flavour& f = GetParam();
  Options o = default_options();
  if (f.expect == Expect::kCaught) {
    // Expected to fail: keep every poisoned object alive until the readers are gone (a
    // reader holding one must see poison, not freed memory), and stop once it is caught.
    o.free_during_run = false;
    o.stop_after_errors = 1000;
  }
  Report r = f.run(o);
  if (f.expect == Expect::kPass) {
    EXPECT_EQ(r.errors(), 0u) << "flavour " << f.name << " failed the torture test; rerun with "
                              << "HOTPROBE_TORTURE_SEED=0x" << std::hex << r.seed << "\n"
                              << r.format();
    EXPECT_GT(r.reads, 0u);
    EXPECT_GT(r.updates, 0u);
  } else {
    // The proof that the test can fail: a domain whose synchronize() does not wait and
    // whose call() runs at once must produce poisoned or too-stale reads.
    EXPECT_GT(r.bad_reads(), 0u) << "the torture test did not catch flavour " << f.name
                                 << " (seed 0x" << std::hex << r.seed << ")\n"
                                 << r.format();
  }
}

INSTANTIATE_TEST_SUITE_P(Flavours, TortureTest, ::testing::ValuesIn(kFlavours),
                         [](const ::testing::TestParamInfo<Flavour>& i) {
                           return std::string(i.param.name);
                         });

}  // namespace
}  // namespace hp::torture
