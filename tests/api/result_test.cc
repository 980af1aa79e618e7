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

Result<std::string> twice(int n) {
  if (n < 0) return Error(Errc::invalid_argument, "negative");
  return std::to_string(2 * n);
}

// and_then: the next step on the value, or the error passed on without calling it.
TEST(Result, AndThenCallsTheNextStepOnlyWithAValue) {
  auto r = Result<int>(21).and_then(&twice);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, "42");
  EXPECT_EQ(Result<int>(-1).and_then(&twice).error().message(), "negative");
  bool called = false;
  auto e = Result<int>(Error(Errc::busy, "in use")).and_then([&](int n) {
    called = true;
    return twice(n);
  });
  EXPECT_FALSE(called);
  EXPECT_EQ(e.error().code(), Errc::busy);
  EXPECT_EQ(e.error().message(), "in use");
}

}  // namespace
