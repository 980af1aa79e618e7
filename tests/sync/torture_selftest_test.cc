// Tests of the torture framework itself, on the reference flavours of torture.h: the
// correct one passes, and each way of breaking a domain is caught by the path of the
// torture run that checks it. Short runs (unit tier); the long runs are in
// torture_stress_test.cc.
#include <gtest/gtest.h>

#include "torture.h"

namespace hp::torture {
namespace {

Options short_options(double seconds = 0.5) {
  Options o = default_options();
  o.seconds = seconds;
  return o;
}

Options expect_failure_options(double seconds = 1.0) {
  Options o = short_options(seconds);
  o.free_during_run = false;  // a reader may hold any poisoned object: never free early
  o.stop_after_errors = 200;
  return o;
}

std::string rerun_hint(const Report& r) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "HOTPROBE_TORTURE_SEED=0x%llx",
                static_cast<unsigned long long>(r.seed));
  return std::string(buf) + "\n" + r.format();
}

TEST(TortureSelftest, ReferenceDomainPasses) {
  SharedMutexDomain d;
  Report r = run_torture(d, "selftest_reference", short_options());
  EXPECT_EQ(r.errors(), 0u) << rerun_hint(r);
  EXPECT_GT(r.reads, 0u);
  EXPECT_GT(r.updates, 0u);
  EXPECT_GT(r.syncs, 0u);
  EXPECT_GT(r.callbacks, 0u);
  EXPECT_GT(r.polls, 0u);
  EXPECT_GT(r.barriers, 0u);
  EXPECT_GT(r.churn_threads, 0u);
  EXPECT_GT(r.lingers, 0u);
  EXPECT_GT(r.nested, 0u);
  EXPECT_FALSE(r.writer_stalled()) << r.format();
  // Everything retired was reclaimed by the end.
  EXPECT_EQ(r.poisoned_objects, r.updates + 1) << r.format();
  // A correct domain never lets a reader see a retired object age.
  for (unsigned i = 1; i <= kPipeLen; i++)
    EXPECT_EQ(r.pipe[i], 0u) << "bucket " << i;
}

TEST(TortureSelftest, BrokenDomainIsCaught) {
  BrokenDomain d;
  Report r = run_torture(d, "selftest_broken", expect_failure_options());
  EXPECT_GT(r.bad_reads(), 0u) << rerun_hint(r);
  EXPECT_GT(r.pipe[kPipeLen] + r.pipe[2] + r.pipe[3], 0u) << r.format();
}

TEST(TortureSelftest, SynchronizeThatDoesNotWaitIsCaught) {
  ReferenceDomain<kBreakSync> d;
  Report r = run_torture(d, "selftest_break_sync", expect_failure_options());
  EXPECT_GT(r.bad_reads(), 0u) << rerun_hint(r);
}

TEST(TortureSelftest, CallThatRunsAtOnceIsCaught) {
  ReferenceDomain<kBreakCall> d;
  Report r = run_torture(d, "selftest_break_call", expect_failure_options());
  EXPECT_GT(r.bad_reads(), 0u) << rerun_hint(r);
  // Some callbacks are queued from inside a read section: run in place, they run there.
  EXPECT_GT(r.err_cb_in_reader, 0u) << rerun_hint(r);
}

TEST(TortureSelftest, PollThatIsDoneAtOnceIsCaught) {
  ReferenceDomain<kBreakPoll> d;
  Report r = run_torture(d, "selftest_break_poll", expect_failure_options());
  EXPECT_GT(r.bad_reads(), 0u) << rerun_hint(r);
}

TEST(TortureSelftest, BarrierThatDoesNotWaitIsCaught) {
  ReferenceDomain<kBreakBarrier> d;
  Report r = run_torture(d, "selftest_break_barrier", expect_failure_options());
  EXPECT_GT(r.err_barrier, 0u) << rerun_hint(r);
}

TEST(TortureSelftest, ReportPrintsThePipeHistogram) {
  Report r;
  r.flavour = "x";
  r.pipe = {10, 0, 3, 0, 1};
  r.err_stale = 3;
  r.err_poisoned = 1;
  std::string s = r.format();
  EXPECT_NE(s.find("Reader Pipe:  10 0 3 0 1"), std::string::npos) << s;
  EXPECT_NE(s.find("!!!"), std::string::npos) << s;
  EXPECT_NE(s.find("FAILURE"), std::string::npos) << s;
  EXPECT_EQ(r.errors(), 4u);
  EXPECT_EQ(r.bad_reads(), 4u);
}

}  // namespace
}  // namespace hp::torture
