// BatchHelper (core/batch_helper.h): every chunk of every pass runs exactly once, on one of
// the two workers; passes that follow each other at once (the same stack address for
// their tasks) are each done whole; a helper that never starts leaves the caller doing
// everything; and a helper that went to sleep between passes still takes part.
#include "core/batch_helper.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace hp::core {
namespace {

// Runs `passes` passes of n items in chunks; checks each item was done once per pass.
void check_passes(BatchHelper& helper, int passes, std::size_t n, std::size_t chunk,
                  std::atomic<long>* by_worker) {
  std::vector<std::atomic<int>> seen(n);
  for (int p = 0; p < passes; p++) {
    for (auto& s : seen)
      s.store(0);
    helper.run(n, chunk, [&](int worker, std::size_t begin, std::size_t end) {
      ASSERT_TRUE(worker == 0 || worker == 1);
      ASSERT_LT(begin, end);
      ASSERT_LE(end - begin, chunk);
      for (std::size_t i = begin; i < end; i++)
        seen[i].fetch_add(1, std::memory_order_relaxed);
      by_worker[worker].fetch_add(static_cast<long>(end - begin), std::memory_order_relaxed);
    });
    for (std::size_t i = 0; i < n; i++)
      ASSERT_EQ(seen[i].load(), 1) << "pass " << p << " item " << i;
  }
}

TEST(CoreBatchHelper, EveryChunkOnceAcrossManyPasses) {
  std::atomic<long> by_worker[2] = {0, 0};
  {
    BatchHelper helper(true);
    check_passes(helper, 200, 1000, 7, by_worker);
    check_passes(helper, 3, 100000, 128, by_worker);
    check_passes(helper, 5, 1, 128, by_worker);  // one chunk, smaller than a chunk
  }
  EXPECT_EQ(by_worker[0].load() + by_worker[1].load(), 200 * 1000 + 3 * 100000 + 5);
}

TEST(CoreBatchHelper, WithoutAThreadTheCallerDoesEverything) {
  std::atomic<long> by_worker[2] = {0, 0};
  BatchHelper helper(false);
  check_passes(helper, 3, 1000, 10, by_worker);
  EXPECT_EQ(by_worker[0].load(), 3000);
  EXPECT_EQ(by_worker[1].load(), 0);
}

TEST(CoreBatchHelper, AHelperThatSleptBetweenPassesStillTakesChunks) {
  std::atomic<long> by_worker[2] = {0, 0};
  BatchHelper helper(true);
  // Past its spin: the helper sleeps on the task word, and run() wakes it.
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  // Chunks slow enough that the helper, once awake, finds some left.
  for (int attempt = 0; attempt < 20 && by_worker[1].load() == 0; attempt++) {
    helper.run(200, 1, [&](int worker, std::size_t, std::size_t) {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
      by_worker[worker].fetch_add(1);
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_GT(by_worker[1].load(), 0) << "the helper never took a chunk";
}

TEST(CoreBatchHelper, NothingToDoReturnsAtOnce) {
  BatchHelper helper(true);
  bool called = false;
  helper.run(0, 16, [&](int, std::size_t, std::size_t) { called = true; });
  EXPECT_FALSE(called);
}

}  // namespace
}  // namespace hp::core
