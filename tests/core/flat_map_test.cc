// FlatMap (core/flat_map.h) against std::unordered_map: random inserts, overwrites and
// erases, with a hash that puts every key in a few home slots so runs are long and
// deletion has to shift entries back across them (and around the array's end).
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <unordered_map>
#include <vector>

#include "core/flat_map.h"

namespace hp::core {
namespace {

struct Crowded {  // eight home slots for every key (the map multiplies and shifts)
  std::size_t operator()(std::uint64_t k) const noexcept { return k % 8; }
};

template <class Hash>
void agrees_with_unordered_map(unsigned seed, std::uint64_t key_range) {
  FlatMap<std::uint64_t, int*, Hash> map;
  std::unordered_map<std::uint64_t, int*> want;
  std::vector<int> values(64);
  std::mt19937_64 rng(seed);
  for (int step = 0; step < 20000; step++) {
    const std::uint64_t k = rng() % key_range;
    switch (rng() % 3) {
      case 0:
      case 1: {
        int* v = &values[rng() % values.size()];
        map.set(k, v);
        want[k] = v;
        break;
      }
      case 2:
        ASSERT_EQ(map.erase(k), want.erase(k) == 1) << "step " << step;
        break;
    }
    ASSERT_EQ(map.size(), want.size());
    if (step % 64 == 0) {
      for (std::uint64_t q = 0; q < key_range; q++) {
        auto it = want.find(q);
        ASSERT_EQ(map.get(q), it == want.end() ? nullptr : it->second) << "key " << q;
      }
      std::size_t seen = 0;
      map.for_each([&](std::uint64_t key, int* v) {
        seen++;
        EXPECT_EQ(want.at(key), v);
      });
      ASSERT_EQ(seen, want.size());
    }
  }
}

TEST(CoreFlatMap, AgreesWithUnorderedMap) {
  for (unsigned seed = 1; seed <= 3; seed++) {
    agrees_with_unordered_map<std::hash<std::uint64_t>>(seed, 300);
    agrees_with_unordered_map<Crowded>(seed, 100);
  }
}

TEST(CoreFlatMap, ReserveThenFillWithoutGrowing) {
  FlatMap<std::uint64_t, int*, std::hash<std::uint64_t>> map;
  int v = 0;
  map.reserve(1000);
  for (std::uint64_t k = 1; k <= 1000; k++)
    map.set(k, &v);
  EXPECT_EQ(map.size(), 1000u);
  EXPECT_EQ(map.get(1000), &v);
  EXPECT_EQ(map.get(1001), nullptr);
  for (std::uint64_t k = 1; k <= 1000; k += 2)
    EXPECT_TRUE(map.erase(k));
  EXPECT_FALSE(map.erase(1));
  EXPECT_EQ(map.size(), 500u);
  for (std::uint64_t k = 2; k <= 1000; k += 2)
    EXPECT_EQ(map.get(k), &v);
}

}  // namespace
// A table that held many entries shrinks as they go, and stays right through it.
TEST(CoreFlatMap, ShrinksWhenMostEntriesAreErased) {
  FlatMap<std::uint64_t, int*, std::hash<std::uint64_t>> map;
  int v = 0;
  for (std::uint64_t k = 1; k <= 10000; k++)
    map.set(k, &v);
  for (std::uint64_t k = 1; k <= 10000; k++) {
    if (k % 2000 != 0) {
      ASSERT_TRUE(map.erase(k)) << k;
    }
  }
  EXPECT_EQ(map.size(), 5u);
  for (std::uint64_t k = 1; k <= 10000; k++)
    ASSERT_EQ(map.get(k), k % 2000 == 0 ? &v : nullptr) << k;
  for (std::uint64_t k = 20001; k <= 20100; k++)
    map.set(k, &v);
  EXPECT_EQ(map.size(), 105u);
  EXPECT_EQ(map.get(20100), &v);
  EXPECT_EQ(map.get(8000), &v);
}

// A map made not to shrink keeps its table when emptied, and stays right.
TEST(CoreFlatMap, ANonShrinkingMapStaysRightWhenEmptied) {
  FlatMap<std::uint64_t, int*, std::hash<std::uint64_t>, false> map;
  int v = 0;
  for (std::uint64_t k = 1; k <= 5000; k++)
    map.set(k, &v);
  for (std::uint64_t k = 1; k <= 5000; k++)
    ASSERT_TRUE(map.erase(k)) << k;
  EXPECT_EQ(map.size(), 0u);
  EXPECT_EQ(map.get(17), nullptr);
  for (std::uint64_t k = 6000; k < 6100; k++)
    map.set(k, &v);
  EXPECT_EQ(map.size(), 100u);
  EXPECT_EQ(map.get(6099), &v);
  EXPECT_EQ(map.get(5000), nullptr);
}

// set_many() is set() of each entry, whatever their order and the map's contents.
TEST(CoreFlatMap, SetManyAgreesWithSetOneByOne) {
  FlatMap<std::uint64_t, int*, std::hash<std::uint64_t>> many, one;
  std::vector<int> values(16);
  for (std::uint64_t k = 1; k <= 300; k += 3) {
    many.set(k, &values[k % 16]);
    one.set(k, &values[k % 16]);
  }
  std::vector<std::pair<std::uint64_t, int*>> batch;
  for (std::uint64_t k = 5000; k > 4000; k -= 7)
    batch.push_back({k, &values[k % 16]});
  for (const auto& [k, v] : batch)
    one.set(k, v);
  many.set_many(batch);
  ASSERT_EQ(many.size(), one.size());
  for (std::uint64_t k = 0; k <= 5001; k++)
    ASSERT_EQ(many.get(k), one.get(k)) << k;
}

}  // namespace hp::core
