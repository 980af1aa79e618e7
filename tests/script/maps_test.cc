// Aggregation shards: merged totals over threads, exited threads kept, clear/zero/delete
// from another thread, a printer walking while owners write (run under TSan too). Maps in
// a SharedRegion: another MapSet reopening it (as hotprobe does after the program's end)
// sees exactly what the owners wrote, pending ops included; a full region falls back to
// the heap and counts; a fork child's maps never write into its parent's.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "script/maps.h"

namespace hotprobe::script {
namespace {

MapDesc count_by_int(const char* name = "@c") {
  MapDesc d;
  d.name = name;
  d.kind = ValueKind::count;
  d.key_is_string = {false};
  return d;
}

void count(MapSet& set, std::size_t map, std::uint64_t k, std::uint64_t n = 1) {
  Shard& s = set.local()->shard(map);
  s.sync_if_stale();
  add_relaxed(*s.find_or_insert(&k), n);
}

std::uint64_t total_of(const std::vector<Row>& rows, std::uint64_t key) {
  for (const Row& r : rows)
    if (r.key[0] == key) return r.value[0];
  return ~0ull;
}

TEST(Maps, ShardsOfSeveralThreadsMergeExactly) {
  MapSet set({count_by_int()});
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      for (std::uint64_t i = 0; i < 10000; ++i)
        count(set, 0, i % 100, t + 1);
    });
  for (auto& t : ts)
    t.join();  // shards outlive their threads
  auto rows = set.snapshot(0);
  ASSERT_EQ(rows.size(), 100u);
  for (std::uint64_t k = 0; k < 100; ++k)
    EXPECT_EQ(total_of(rows, k), 100u * (1 + 2 + 3 + 4));
}

TEST(Maps, GrowKeepsValues) {
  MapSet set({count_by_int()});
  for (std::uint64_t i = 0; i < 5000; ++i)
    count(set, 0, i * 7919, i);
  auto rows = set.snapshot(0);
  ASSERT_EQ(rows.size(), 5000u);
  for (std::uint64_t i = 0; i < 5000; i += 97)
    EXPECT_EQ(total_of(rows, i * 7919), i);
}

TEST(Maps, ClearZeroDeleteFromAnotherThread) {
  MapSet set({count_by_int()});
  std::thread([&] {
    count(set, 0, 1, 5);
    count(set, 0, 2, 7);
  }).join();
  count(set, 0, 1, 1);
  // delete from a third thread: the dead thread's shard is filtered by the printer.
  std::thread([&] {
    std::uint64_t k = 1;
    set.agg(0).erase(&k);
  }).join();
  auto rows = set.snapshot(0);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(total_of(rows, 2), 7u);
  // New counts after a delete start from zero.
  count(set, 0, 1, 3);
  EXPECT_EQ(total_of(set.snapshot(0), 1), 3u);

  std::thread([&] { set.zero(0); }).join();
  rows = set.snapshot(0);
  ASSERT_EQ(rows.size(), 2u);  // zero keeps the keys
  EXPECT_EQ(total_of(rows, 1), 0u);
  EXPECT_EQ(total_of(rows, 2), 0u);
  count(set, 0, 2, 4);
  EXPECT_EQ(total_of(set.snapshot(0), 2), 4u);

  std::thread([&] { set.clear(0); }).join();
  EXPECT_TRUE(set.snapshot(0).empty());
  count(set, 0, 9, 1);
  rows = set.snapshot(0);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(total_of(rows, 9), 1u);
}

TEST(Maps, MinMaxAvgHistMerge) {
  MapDesc mn{"@mn", ValueKind::min, {}}, mx{"@mx", ValueKind::max, {}},
      av{"@av", ValueKind::avg, {}}, h{"@h", ValueKind::hist, {}};
  MapSet set({mn, mx, av, h});
  auto body = [&](std::int64_t v) {
    std::uint64_t none = 0;
    auto* w = set.local()->shard(0).find_or_insert(&none);
    if (!w[1].load() || static_cast<std::int64_t>(w[0].load()) > v) w[0] = v, w[1] = 1;
    w = set.local()->shard(1).find_or_insert(&none);
    if (!w[1].load() || static_cast<std::int64_t>(w[0].load()) < v) w[0] = v, w[1] = 1;
    w = set.local()->shard(2).find_or_insert(&none);
    add_relaxed(w[0], 1);
    add_relaxed(w[1], static_cast<std::uint64_t>(v));
    w = set.local()->shard(3).find_or_insert(&none);
    add_relaxed(w[hist_bucket(v)], 1);
  };
  std::thread([&] { body(-5); }).join();
  std::thread([&] { body(10); }).join();
  body(4);
  EXPECT_EQ(static_cast<std::int64_t>(set.snapshot(0)[0].value[0]), -5);
  EXPECT_EQ(static_cast<std::int64_t>(set.snapshot(1)[0].value[0]), 10);
  EXPECT_EQ(set.snapshot(2)[0].value[0], 3u);
  EXPECT_EQ(set.snapshot(2)[0].value[1], 9u);
  auto hb = set.snapshot(3)[0].value;
  EXPECT_EQ(hb[0], 1u);                // < 0
  EXPECT_EQ(hb[hist_bucket(4)], 1u);   // [4, 8)
  EXPECT_EQ(hb[hist_bucket(10)], 1u);  // [8, 16)
}

TEST(Maps, HistBuckets) {
  EXPECT_EQ(hist_bucket(-1), 0u);
  EXPECT_EQ(hist_bucket(0), 1u);
  EXPECT_EQ(hist_bucket(1), 2u);
  EXPECT_EQ(hist_bucket(2), 3u);
  EXPECT_EQ(hist_bucket(3), 3u);
  EXPECT_EQ(hist_bucket(4), 4u);
  EXPECT_EQ(hist_bucket(INT64_MAX), 64u);
  EXPECT_EQ(lhist_bucket(-1, 0, 100, 10, 12), 0u);
  EXPECT_EQ(lhist_bucket(0, 0, 100, 10, 12), 1u);
  EXPECT_EQ(lhist_bucket(99, 0, 100, 10, 12), 10u);
  EXPECT_EQ(lhist_bucket(100, 0, 100, 10, 12), 11u);
}

TEST(Maps, PlainMapsAreGlobal) {
  MapDesc d{"@start", ValueKind::integer, {false}};
  MapDesc s{"@s", ValueKind::string, {true}};
  MapSet set({d, s});
  std::thread([&] {
    std::uint64_t k = 42, v = 1000;
    set.plain(0).set(&k, &v);
  }).join();
  std::uint64_t k = 42, v = 0;
  EXPECT_TRUE(set.plain(0).get(&k, &v));
  EXPECT_EQ(v, 1000u);
  EXPECT_EQ(set.plain(0).add(&k, 5), 1005);
  EXPECT_TRUE(set.plain(0).erase(&k));
  EXPECT_FALSE(set.plain(0).get(&k, &v));
  EXPECT_EQ(v, 0u);  // a missing key reads 0
  std::uint64_t key[kStrWords], val[kStrWords];
  put_string(key, "k");
  put_string(val, "value");
  set.plain(1).set(key, val);
  std::uint64_t out[kStrWords];
  ASSERT_TRUE(set.plain(1).get(key, out));
  EXPECT_EQ(get_string(out), "value");
}

MapDesc per_thread_int(const char* name = "@start") {
  MapDesc d{name, ValueKind::integer, {false}};
  d.per_thread = true;
  return d;
}

std::uint64_t get_own(MapSet& set, std::size_t map, std::uint64_t key) {
  Shard& s = set.local()->shard(map);
  s.sync_if_stale();
  return s.plain_get_int(key);
}
void set_own(MapSet& set, std::size_t map, std::uint64_t key, std::uint64_t v) {
  Shard& s = set.local()->shard(map);
  s.sync_if_stale();
  s.plain_set_int(key, v);
}
void erase_own(MapSet& set, std::size_t map, std::uint64_t key) {
  Shard& s = set.local()->shard(map);
  s.sync_if_stale();
  s.plain_erase(key);
}

TEST(Maps, PerThreadPlainMapMergesEveryThreadsKey) {
  MapSet set({per_thread_int()});
  ASSERT_TRUE(set.is_sharded(0));
  std::vector<std::thread> ts;
  for (std::uint64_t t = 1; t <= 4; ++t)
    ts.emplace_back([&, t] {
      EXPECT_EQ(get_own(set, 0, t), 0u);  // a missing key reads 0
      for (std::uint64_t i = 0; i < 1000; ++i) {
        set_own(set, 0, t, i);
        EXPECT_EQ(get_own(set, 0, t), i);
        erase_own(set, 0, t);
        EXPECT_EQ(get_own(set, 0, t), 0u);
      }
      set_own(set, 0, t, 100 * t);
      Shard& s = set.local()->shard(0);
      EXPECT_EQ(s.plain_add(t, 5), 100 * t + 5);
      if (t == 4) erase_own(set, 0, t);  // deleted: not printed
    });
  for (auto& t : ts)
    t.join();  // the entries outlive their threads
  auto rows = set.snapshot(0);
  ASSERT_EQ(rows.size(), 3u);
  for (std::uint64_t t = 1; t <= 3; ++t)
    EXPECT_EQ(total_of(rows, t), 100 * t + 5);
}

TEST(Maps, PerThreadPlainMapClearZeroDeleteFromAnotherThread) {
  MapSet set({per_thread_int()});
  // A live owner that sets its key and then waits while other threads act on the map.
  std::atomic<int> step{0};
  std::uint64_t seen_after_delete = 1, seen_after_zero = 1, seen_after_clear = 1;
  std::thread owner([&] {
    set_own(set, 0, 7, 70);
    step = 1;
    while (step.load() != 2)
      std::this_thread::yield();
    seen_after_delete = get_own(set, 0, 7);
    set_own(set, 0, 7, 71);
    step = 3;
    while (step.load() != 4)
      std::this_thread::yield();
    seen_after_zero = get_own(set, 0, 7);
    set_own(set, 0, 7, 72);
    step = 5;
    while (step.load() != 6)
      std::this_thread::yield();
    seen_after_clear = get_own(set, 0, 7);
  });
  set_own(set, 0, 8, 80);
  while (step.load() != 1)
    std::this_thread::yield();
  std::thread([&] {
    std::uint64_t k = 7;
    set.agg(0).erase(&k);
  }).join();
  // The owner has not synced yet: the printer applies the pending delete itself.
  auto rows = set.snapshot(0);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(total_of(rows, 8), 80u);
  step = 2;
  while (step.load() != 3)
    std::this_thread::yield();
  EXPECT_EQ(seen_after_delete, 0u);
  EXPECT_EQ(total_of(set.snapshot(0), 7), 71u);

  std::thread([&] { set.zero(0); }).join();
  rows = set.snapshot(0);
  ASSERT_EQ(rows.size(), 2u);  // zero keeps the keys
  EXPECT_EQ(total_of(rows, 7), 0u);
  EXPECT_EQ(total_of(rows, 8), 0u);
  step = 4;
  while (step.load() != 5)
    std::this_thread::yield();
  EXPECT_EQ(seen_after_zero, 0u);

  std::thread([&] { set.clear(0); }).join();
  EXPECT_TRUE(set.snapshot(0).empty());
  EXPECT_EQ(get_own(set, 0, 8), 0u);
  step = 6;
  owner.join();
  EXPECT_EQ(seen_after_clear, 0u);
  EXPECT_TRUE(set.snapshot(0).empty());
}

TEST(Maps, PerThreadPlainMapNewestShardWinsAReusedKey) {
  // A tid reused by a newer thread: both shards hold the key; the newer value prints.
  MapSet set({per_thread_int()});
  std::thread([&] { set_own(set, 0, 5, 1); }).join();
  std::thread([&] { set_own(set, 0, 5, 2); }).join();
  auto rows = set.snapshot(0);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(total_of(rows, 5), 2u);
}

TEST(Maps, PerThreadStringMap) {
  MapDesc d{"@name", ValueKind::string, {false}};
  d.per_thread = true;
  MapSet set({d});
  std::uint64_t val[kStrWords], out[kStrWords];
  put_string(val, "hello");
  Shard& s = set.local()->shard(0);
  EXPECT_FALSE(s.plain_get(3, out));
  EXPECT_EQ(get_string(out), "");
  s.plain_set(3, val);
  ASSERT_TRUE(s.plain_get(3, out));
  EXPECT_EQ(get_string(out), "hello");
  auto rows = set.snapshot(0);
  ASSERT_EQ(rows.size(), 1u);
  ASSERT_EQ(rows[0].value.size(), kStrWords);  // "present" is not part of the value
  EXPECT_EQ(get_string(rows[0].value.data()), "hello");
}

// Owners set/delete their keys while a printer walks and clears (TSan checks the protocol).
TEST(Maps, PerThreadPlainConcurrentPrinting) {
  MapSet set({per_thread_int()});
  std::atomic<bool> stop{false};
  std::vector<std::thread> writers;
  for (std::uint64_t t = 1; t <= 3; ++t)
    writers.emplace_back([&, t] {
      for (std::uint64_t i = 0; i < 100000; ++i) {
        set_own(set, 0, t, i + 1);
        if (get_own(set, 0, t) == 0) set_own(set, 0, t, i + 1);  // a clear came in between
        erase_own(set, 0, t);
      }
    });
  std::thread printer([&] {
    int clears = 0;
    while (!stop.load()) {
      for (const Row& r : set.snapshot(0))
        ASSERT_TRUE(r.key[0] >= 1 && r.key[0] <= 3);
      if (clears++ < 5) set.clear(0);
    }
  });
  for (auto& w : writers)
    w.join();
  stop = true;
  printer.join();
  EXPECT_TRUE(set.snapshot(0).empty());  // every key was deleted last
  for (std::uint64_t t = 1; t <= 3; ++t)
    std::thread([&, t] { set_own(set, 0, t, t); }).join();
  auto rows = set.snapshot(0);
  ASSERT_EQ(rows.size(), 3u);
  for (std::uint64_t t = 1; t <= 3; ++t)
    EXPECT_EQ(total_of(rows, t), t);
}

// The printer walks while owners insert, grow and add; clear() runs in between. TSan
// checks the protocol; the final totals check that no add was lost after the last clear.
TEST(Maps, ConcurrentPrintingWhileWriting) {
  MapSet set({count_by_int()});
  std::atomic<bool> stop{false};
  std::atomic<int> phase{0};
  std::vector<std::thread> writers;
  constexpr int kThreads = 3;
  constexpr std::uint64_t kIters = 200000;
  for (int t = 0; t < kThreads; ++t)
    writers.emplace_back([&] {
      for (std::uint64_t i = 0; i < kIters; ++i)
        count(set, 0, i % 1000);
      phase.fetch_add(1);
    });
  std::thread printer([&] {
    int clears = 0;
    while (!stop.load()) {
      auto rows = set.snapshot(0);
      for (const Row& r : rows)
        ASSERT_LT(r.key[0], 1000u);
      if (clears < 3) {
        set.clear(0);
        ++clears;
      }
    }
  });
  for (auto& w : writers)
    w.join();
  stop = true;
  printer.join();
  // After the writers are done and one more op settles them, counts are stable.
  set.clear(0);
  std::vector<std::thread> again;
  for (int t = 0; t < kThreads; ++t)
    again.emplace_back([&] {
      for (std::uint64_t i = 0; i < 1000; ++i)
        count(set, 0, i % 10);
    });
  for (auto& t : again)
    t.join();
  auto rows = set.snapshot(0);
  ASSERT_EQ(rows.size(), 10u);
  for (const Row& r : rows)
    EXPECT_EQ(r.value[0], 100u * kThreads);
}

// ---------------------------------------------------------------------------------------
// Maps in a SharedRegion

std::vector<Row> sorted(std::vector<Row> rows) {
  std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.key < b.key; });
  return rows;
}

MapDesc plain_by_int(const char* name) {
  MapDesc d;
  d.name = name;
  d.kind = ValueKind::integer;
  d.key_is_string = {false};
  return d;
}

MapDesc hist_no_key(const char* name) {
  MapDesc d;
  d.name = name;
  d.kind = ValueKind::hist;
  return d;
}

std::vector<MapDesc> region_descs() {
  return {count_by_int("@c"), hist_no_key("@h"), plain_by_int("@p"), per_thread_int()};
}

std::unique_ptr<SharedRegion> make_region(std::size_t bytes = std::size_t{64} << 20) {
  std::string why;
  auto r = SharedRegion::create(bytes, &why);
  EXPECT_TRUE(r) << why;
  return r;
}

// Four threads write every kind of map; some ops stay pending (the threads are gone).
void fill(MapSet& set) {
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      for (std::uint64_t i = 0; i < 3000; ++i) {
        count(set, 0, i % 500, t + 1);  // grows each thread's table several times
        Shard& h = set.local()->shard(1);
        h.sync_if_stale();
        add_relaxed(h.find_or_insert0()[hist_bucket(static_cast<std::int64_t>(i))], 1);
      }
      std::uint64_t k = 100 + t, v = 7 * (t + 1);
      set.plain(2).set(&k, &v);
      set_own(set, 3, 1000 + t, 11 * (t + 1));
    });
  for (auto& t : ts)
    t.join();
  std::uint64_t gone = 3;
  set.agg(0).erase(&gone);  // pending in every shard: their threads never run again
  std::uint64_t p = 100;
  set.plain(2).erase(&p);
}

TEST(SharedMaps, ReopenSeesWhatTheOwnersWrote) {
  auto region = make_region();
  MapSet writer(region_descs(), region.get(), /*reopen=*/false, 42);
  fill(writer);
  MapSet reader(region_descs(), region.get(), /*reopen=*/true, 42);
  EXPECT_EQ(SharedRegion::reopen_error(), "");
  for (std::size_t m = 0; m < writer.size(); ++m) {
    auto want = sorted(writer.snapshot(m)), got = sorted(reader.snapshot(m));
    ASSERT_EQ(got.size(), want.size()) << writer.desc(m).name;
    for (std::size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(got[i].key, want[i].key) << writer.desc(m).name;
      EXPECT_EQ(got[i].value, want[i].value) << writer.desc(m).name;
    }
  }
  auto c = reader.snapshot(0);
  EXPECT_EQ(c.size(), 499u);  // key 3 erased
  EXPECT_EQ(total_of(c, 4), 6u * (1 + 2 + 3 + 4));
  EXPECT_EQ(region->header().refused.load(), 0u);
}

TEST(SharedMaps, ReopenAppliesAPendingClearAndZero) {
  auto region = make_region();
  MapSet writer({count_by_int(), per_thread_int()}, region.get(), false, 1);
  std::thread([&] {
    count(writer, 0, 5, 9);
    set_own(writer, 1, 77, 3);
  }).join();
  writer.clear(0);  // the owner is gone: its table still holds key 5
  writer.zero(1);
  MapSet reader({count_by_int(), per_thread_int()}, region.get(), true, 1);
  EXPECT_TRUE(reader.snapshot(0).empty());
  auto p = reader.snapshot(1);
  ASSERT_EQ(p.size(), 1u);  // zero keeps the key, as in the writer
  EXPECT_EQ(p[0].value[0], 0u);
  // The reader's own thread writes on (END running in hotprobe): a new shard of its own.
  count(reader, 0, 6, 2);
  EXPECT_EQ(total_of(reader.snapshot(0), 6), 2u);
}

TEST(SharedMaps, ReopenRefusesAnotherScript) {
  auto region = make_region();
  MapSet writer({count_by_int("@a")}, region.get(), false, 7);
  count(writer, 0, 1);
  MapSet other_hash({count_by_int("@a")}, region.get(), true, 8);
  EXPECT_NE(SharedRegion::reopen_error().find("another script"), std::string::npos);
  EXPECT_TRUE(other_hash.snapshot(0).empty());
  MapSet other_maps({count_by_int("@b")}, region.get(), true, 7);
  EXPECT_NE(SharedRegion::reopen_error().find("@b"), std::string::npos);
  auto empty = make_region();
  MapSet nothing({count_by_int("@a")}, empty.get(), true, 7);
  EXPECT_NE(SharedRegion::reopen_error().find("laid out no maps"), std::string::npos);
}

// A program that scribbles on its region: hotprobe reads nonsense but never crashes or
// loops. The maps' descriptions stay (else the reopen refuses before walking anything);
// every link, table word, slot and record after them is overwritten.
TEST(SharedMaps, ReopenSurvivesAScribbledRegion) {
  auto region = make_region(std::size_t{1} << 20);
  MapSet writer(region_descs(), region.get(), false, 3);
  fill(writer);
  writer.clear(0);
  std::uint64_t k = 1;
  writer.agg(0).erase(&k);
  const region::Header& h = region->header();
  const std::uint64_t top = h.top.load();
  auto* recs = region->at<region::MapRecord>(h.maps_off);
  std::uint64_t from = 0;
  for (std::uint32_t m = 0; m < h.map_count; ++m)
    from = std::max(from, recs[m].name_off + recs[m].name_len);
  from = (from + 7) & ~std::uint64_t{7};
  std::uint64_t x = 0x9e3779b97f4a7c15ull;
  auto next = [&] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  for (int round = 0; round < 30; ++round) {
    // Offsets into the region (cycles, overlaps), or anything at all.
    auto word = [&] { return round % 2 ? (next() % top) & ~std::uint64_t{7} : next(); };
    for (std::uint32_t m = 0; m < h.map_count; ++m) {
      recs[m].epoch.store(word());
      recs[m].ops.store(word());
      recs[m].shards.store(word());
      recs[m].stripes.store(word());
    }
    auto* words = region->at<std::uint64_t>(from);
    for (std::uint64_t i = 0; i < (top - from) / 8; i += 1 + (next() >> 61))
      words[i] = word();
    MapSet reader(region_descs(), region.get(), true, 3);
    ASSERT_EQ(SharedRegion::reopen_error(), "");
    for (std::size_t m = 0; m < reader.size(); ++m)
      (void)reader.snapshot(m);
  }
}

TEST(SharedMaps, AFullRegionFallsBackToTheHeapAndCounts) {
  auto region = make_region(64 * 1024);  // room for a few small tables only
  MapSet set({count_by_int()}, region.get(), false, 1);
  for (std::uint64_t i = 0; i < 20000; ++i)
    count(set, 0, i, 1);
  auto rows = set.snapshot(0);
  ASSERT_EQ(rows.size(), 20000u);  // the program's own view stays exact
  for (std::uint64_t i = 0; i < 20000; i += 331)
    EXPECT_EQ(total_of(rows, i), 1u);
  EXPECT_GT(region->header().refused.load(), 0u);
  // What hotprobe reads is the last table published there: fewer keys, never garbage.
  MapSet reader({count_by_int()}, region.get(), true, 1);
  for (const Row& r : reader.snapshot(0)) {
    ASSERT_LT(r.key[0], 20000u);
    EXPECT_EQ(r.value[0], 1u);
  }
}

// The agent's region (adopt_shared_maps, once per process): a fork child's maps become
// private, so its counts and its clear never reach the parent's.
TEST(SharedMaps, ForkChildWritesStayInTheChild) {
  auto region = make_region();
  const std::string source = "uprobe:x:y { @c[arg0] = count(); }";
  int fd = ::dup(region->fd());
  ASSERT_EQ(::setenv(SharedRegion::kEnvFd, std::to_string(fd).c_str(), 1), 0);
  ASSERT_TRUE(adopt_shared_maps(source));
  EXPECT_EQ(std::getenv(SharedRegion::kEnvFd), nullptr);
  MapSet set({count_by_int()});  // takes the adopted region, as Program::compile does
  EXPECT_TRUE(shared_maps_complete());
  count(set, 0, 1, 10);
  pid_t child = ::fork();
  if (child == 0) {
    set.clear(0);
    for (std::uint64_t i = 0; i < 5000; ++i)
      count(set, 0, i, 100);  // grows: never into the shared memory
    set_shared_maps_phase(region::kMapsPrinted);
    ::_exit(shared_maps_complete() ? 1 : 0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  MapSet reader({count_by_int()}, region.get(), true, source_hash(source));
  EXPECT_EQ(SharedRegion::reopen_error(), "");
  auto rows = reader.snapshot(0);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(total_of(rows, 1), 10u);
  EXPECT_EQ(region->header().phase.load(), region::kTracing);

  // The program took the descriptor back (closed it, reused its number for a file of its
  // own): the child's copy is made without it, and still never writes into the parent's.
  int other = ::memfd_create("not-the-region", 0);  // as large, mappable, all zeros
  ASSERT_GE(other, 0);
  ASSERT_EQ(::ftruncate(other, static_cast<off_t>(region->size())), 0);
  ASSERT_EQ(::dup2(other, fd), fd);
  ::close(other);
  child = ::fork();
  if (child == 0) {
    count(set, 0, 1, 5);  // the child sees its parent's 10 and adds to its own copy
    auto mine = set.snapshot(0);
    set.clear(0);
    for (std::uint64_t i = 0; i < 5000; ++i)
      count(set, 0, i, 100);
    ::_exit(total_of(mine, 1) == 15 && !shared_maps_complete() ? 0 : 1);
  }
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  MapSet again({count_by_int()}, region.get(), true, source_hash(source));
  rows = again.snapshot(0);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(total_of(rows, 1), 10u);
}

}  // namespace
}  // namespace hotprobe::script
