#include <gtest/gtest.h>

#include "base/assert.h"
#include "base/error.h"

namespace {

hp::Result<int> parse_positive(int v) {
  if (v <= 0) return hp::Error(hp::Errc::invalid_argument, "value must be positive");
  return v;
}

hp::Result<void> chain(int v) {
  HP_TRY(parse_positive(v));
  return {};
}

TEST(Result, ValueAndError) {
  auto good = parse_positive(3);
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(*good, 3);
  auto bad = parse_positive(-1);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code(), hp::Errc::invalid_argument);
  EXPECT_EQ(bad.error().message(), "value must be positive");
}

TEST(Result, TryPropagates) {
  EXPECT_TRUE(chain(1).ok());
  auto r = chain(0);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), hp::Errc::invalid_argument);
}

TEST(Result, SysErrorNamesErrno) {
  auto e = hp::sys_error("open /nonexistent", ENOENT);
  EXPECT_EQ(e.code(), hp::Errc::not_found);
  EXPECT_NE(e.message().find("No such file"), std::string::npos);
}

TEST(Assert, DiesWithFileAndLine) {
  EXPECT_DEATH(HP_CHECK_MSG(1 + 1 == 3, "arithmetic"),
               "result_test.cc:[0-9]+: 1 \\+ 1 == 3: arithmetic");
}

}  // namespace
