// <hotprobe/symbols.h>: targets resolved without attaching, files listed, addresses named.
#include "hotprobe/symbols.h"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <string>

#include <gtest/gtest.h>

extern "C" {
__attribute__((noinline, used)) int hp_sym_alpha(int a) {
  return a * 3 + 1;
}
__attribute__((noinline, used)) int hp_sym_alphabet(int a) {
  return a * 5 + 2;
}
__attribute__((noinline, used)) int hp_sym_beta(int a) {
  return a - 7;
}
}

namespace {

std::string self_path() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

TEST(Symbols, ResolveExactNameGivesItsAddress) {
  auto fns = hotprobe::resolve_functions(":hp_sym_alpha");
  ASSERT_TRUE(fns.ok()) << fns.error().message();
  ASSERT_EQ(fns->size(), 1u);
  EXPECT_EQ((*fns)[0].name, "hp_sym_alpha");
  EXPECT_EQ((*fns)[0].address, reinterpret_cast<std::uintptr_t>(&hp_sym_alpha));
  EXPECT_EQ((*fns)[0].module, self_path());
  EXPECT_EQ((*fns)[0].offset, 0u);
  EXPECT_GT((*fns)[0].size, 0u);
}

TEST(Symbols, GlobExpandsToEveryMatch) {
  auto fns = hotprobe::resolve_functions(":hp_sym_alpha*");
  ASSERT_TRUE(fns.ok()) << fns.error().message();
  std::vector<std::string> names;
  for (const auto& f : *fns)
    names.push_back(f.name);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"hp_sym_alpha", "hp_sym_alphabet"}));
}

TEST(Symbols, OffsetIntoAFunction) {
  auto fns = hotprobe::resolve_functions(":hp_sym_beta+1");
  ASSERT_TRUE(fns.ok()) << fns.error().message();
  ASSERT_EQ(fns->size(), 1u);
  EXPECT_EQ((*fns)[0].offset, 1u);
  EXPECT_EQ((*fns)[0].address, reinterpret_cast<std::uintptr_t>(&hp_sym_beta));
}

TEST(Symbols, ShortLibraryName) {
  auto fns = hotprobe::resolve_functions("libc:getpid");
  ASSERT_TRUE(fns.ok()) << fns.error().message();
  ASSERT_FALSE(fns->empty());
  EXPECT_NE((*fns)[0].module.find("libc"), std::string::npos);
  EXPECT_NE((*fns)[0].address, 0u);
}

TEST(Symbols, UnknownFunctionIsNotFoundWithASuggestion) {
  auto fns = hotprobe::resolve_functions(":hp_sym_alpah");
  ASSERT_FALSE(fns.ok());
  EXPECT_EQ(fns.error().code(), hotprobe::Errc::not_found);
  EXPECT_NE(fns.error().message().find("hp_sym_alpha"), std::string::npos) << fns.error().message();
}

TEST(Symbols, MissingColonIsRefused) {
  auto fns = hotprobe::resolve_functions("hp_sym_alpha");
  ASSERT_FALSE(fns.ok());
  EXPECT_EQ(fns.error().code(), hotprobe::Errc::invalid_argument);
}

TEST(Symbols, ListFunctionsOfAFileOnDisk) {
  auto fns = hotprobe::list_functions(self_path(), "hp_sym_*");
  ASSERT_TRUE(fns.ok()) << fns.error().message();
  std::vector<std::string> names;
  for (const auto& f : *fns) {
    names.push_back(f.name);
    EXPECT_EQ(f.address, 0u);
  }
  EXPECT_EQ(names, (std::vector<std::string>{"hp_sym_alpha", "hp_sym_alphabet", "hp_sym_beta"}));
  auto none = hotprobe::list_functions("/nonexistent/file", "*");
  EXPECT_FALSE(none.ok());
}

TEST(Symbols, FunctionAtNamesTheContainingFunction) {
  auto addr = reinterpret_cast<std::uintptr_t>(&hp_sym_beta);
  auto f = hotprobe::function_at(addr + 1);
  ASSERT_TRUE(f.ok()) << f.error().message();
  EXPECT_EQ(f->name, "hp_sym_beta");
  EXPECT_EQ(f->offset, 1u);
  EXPECT_EQ(f->address, addr);
  EXPECT_FALSE(hotprobe::function_at(0x10).ok());
}

}  // namespace
