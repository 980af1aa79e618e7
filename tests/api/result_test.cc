// hotprobe::Result: no exception crosses the API, not even from a misuse.
#include "hotprobe/result.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace {

using hotprobe::Errc;
using hotprobe::Error;
using hotprobe::Result;

Result<int> fails() {
  return Error(Errc::not_found, "no such symbol 'mallocc' in libc.so.6");
}

TEST(ResultDeathTest, ValueOfAnErrorStopsWithTheErrorsMessage) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Result<int> r = fails();
  ASSERT_FALSE(r.ok());
  // Not a std::bad_variant_access escaping through a noexcept API: the message names
  // the misuse, the error and the way out.
  EXPECT_DEATH((void)r.value(),
               "Result::value\\(\\) called on an error \\(not found\\): no such symbol "
               "'mallocc' in libc.so.6; check ok\\(\\) before value\\(\\)");
  EXPECT_DEATH((void)*r, "called on an error");
  const Result<std::vector<int>> cr = Error(Errc::busy, "in use");
  EXPECT_DEATH((void)cr->size(), "called on an error \\(busy\\): in use");
  EXPECT_DEATH((void)std::move(cr).value(), "in use");
}

TEST(Result, ErrorOfAValueIsOk) {
  Result<std::string> r = std::string("x");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.error().code(), Errc::ok);
  EXPECT_TRUE(r.error().message().empty());
  EXPECT_FALSE(r.error());
  EXPECT_EQ(r.value(), "x");
  Result<void> v;
  EXPECT_EQ(v.error().code(), Errc::ok);
}

}  // namespace
