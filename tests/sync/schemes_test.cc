// The scheme table (sync/schemes.h): one row per hotprobe::Scheme in enum order, distinct
// names and labels, and the compile-time and run-time views of a row agree.
#include <gtest/gtest.h>

#include <set>
#include <string_view>
#include <type_traits>
#include <vector>

#include "sync/schemes.h"

namespace {

using hotprobe::Scheme;
using hp::sync::kSchemeCount;
using hp::sync::kSchemes;
using hp::sync::SchemeTraits;

TEST(SchemeTable, RowsFollowTheEnumWithDistinctNames) {
  std::set<std::string_view> names, labels;
  for (std::size_t i = 0; i < kSchemeCount; i++) {
    EXPECT_EQ(hp::sync::scheme_index(kSchemes[i].scheme), i);
    EXPECT_FALSE(kSchemes[i].name.empty());
    EXPECT_TRUE(names.insert(kSchemes[i].name).second) << kSchemes[i].name;
    EXPECT_TRUE(labels.insert(kSchemes[i].label).second) << kSchemes[i].label;
  }
  EXPECT_EQ(kSchemes[0].scheme, Scheme::tasks_trace);  // the default comes first
  EXPECT_EQ(kSchemes[kSchemeCount - 1].scheme, Scheme::rwlock);
}

TEST(SchemeTable, ForEachVisitsEveryRowInOrder) {
  std::vector<Scheme> seen;
  hp::sync::for_each_scheme([&](auto s) {
    using Traits = SchemeTraits<decltype(s)::value>;
    const auto& row = kSchemes[hp::sync::scheme_index(s)];
    EXPECT_EQ(Traits::name, row.name);
    EXPECT_EQ(Traits::label, row.label);
    EXPECT_EQ(Traits::baseline, row.baseline);
    EXPECT_EQ(hp::sync::scheme_label<typename Traits::Domain>(), row.label);
    seen.push_back(s);
  });
  ASSERT_EQ(seen.size(), kSchemeCount);
  for (std::size_t i = 0; i < kSchemeCount; i++)
    EXPECT_EQ(seen[i], kSchemes[i].scheme);
}

TEST(SchemeTable, WithSchemeReachesTheRowOfARunTimeValue) {
  for (const auto& row : kSchemes) {
    const std::string_view name =
        hp::sync::with_scheme(row.scheme, [](auto s) { return SchemeTraits<s>::name; });
    EXPECT_EQ(name, row.name);
  }
  using Srcu = SchemeTraits<Scheme::srcu>::Domain;
  static_assert(std::is_same_v<Srcu, hp::sync::Srcu>);
  static_assert(std::is_same_v<SchemeTraits<Scheme::tasks_trace>::Domain, hp::sync::TasksTrace>);
}

TEST(SchemeTableDeathTest, WithSchemeRefusesAValueThatIsNoScheme) {
  const auto bogus = static_cast<Scheme>(kSchemeCount);
  EXPECT_DEATH(hp::sync::with_scheme(bogus, [](auto) { return 0; }), "not a hotprobe::Scheme");
}

}  // namespace
