// install_return_trampolines(): a scheme's return side is built from the templates,
// written, and published to the dispatcher in one call.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "core/dispatch.h"
#include "core/x86_64/return_trampolines.h"

namespace hp::core {
namespace {

using hotprobe::Scheme;

std::vector<std::uint8_t> bytes_at(std::uintptr_t address, std::size_t n) {
  std::vector<std::uint8_t> b(n);
  std::memcpy(b.data(), reinterpret_cast<const void*>(address), n);
  return b;
}

// The bytes make_return_trampoline() gives for the scheme at `address`.
std::vector<std::uint8_t> expected(Scheme s, std::uintptr_t address, bool by_ret) {
  FastReturn fast;
  auto code = make_return_trampoline(return_trampoline_spec(s, address, by_ret, fast));
  EXPECT_TRUE(code.ok());
  return code.ok() ? *code : std::vector<std::uint8_t>{};
}

TEST(CoreReturnTrampolines, WritesBothAndPublishesTheOneHijackedReturnsReach) {
  for (Scheme s : {Scheme::srcu, Scheme::tasks_trace}) {
    SCOPED_TRACE(static_cast<int>(s));
    ASSERT_EQ(return_trampoline(s), 0u);
    arch::CodeMemory code(1024, 64 * 1024);
    const auto near = reinterpret_cast<std::uint64_t>(&install_return_trampolines);
    auto r = install_return_trampolines(code, s, near);
    ASSERT_TRUE(r.ok()) << r.error().message();
    ASSERT_NE(r->hijack, 0u);
    ASSERT_NE(r->landing, 0u);
    EXPECT_NE(r->hijack, r->landing);
    EXPECT_EQ(return_trampoline(s), r->hijack);
    const auto jmp = expected(s, r->hijack, false);
    const auto ret = expected(s, r->landing, true);
    EXPECT_EQ(bytes_at(r->hijack, jmp.size()), jmp);
    EXPECT_EQ(bytes_at(r->landing, ret.size()), ret);
    set_return_trampoline(s, 0);  // the code memory goes with this scope
    set_one_return_entry(0);
  }
}

}  // namespace
}  // namespace hp::core
