// IpMap: a jmp site's inline map from the displaced instructions to their copies.
#include <gtest/gtest.h>

#include <span>

#include "core/site.h"

namespace hp::core {
namespace {

TEST(IpMap, HoldsFourEntriesAndRefusesAFifth) {
  IpMap m;
  EXPECT_TRUE(m.empty());
  EXPECT_EQ(std::span<const IpMap::Entry>(m).size(), 0u);
  for (std::uint32_t i = 1; i <= IpMap::kCapacity; i++)
    EXPECT_TRUE(m.push_back({i, 0x1000 + i}));
  EXPECT_FALSE(m.push_back({9, 0x2000}));
  ASSERT_EQ(m.size(), IpMap::kCapacity);
  std::span<const IpMap::Entry> view = m;
  ASSERT_EQ(view.size(), IpMap::kCapacity);
  std::uint32_t expect = 1;
  for (const auto& [off, to] : view) {
    EXPECT_EQ(off, expect);
    EXPECT_EQ(to, 0x1000u + expect);
    expect++;
  }
  // Copied with the site's other fields (a Site is built in place, but the map is a value).
  IpMap copy = m;
  EXPECT_EQ(copy.size(), m.size());
  EXPECT_EQ(copy.begin()[3].second, 0x1004u);
}

}  // namespace
}  // namespace hp::core
