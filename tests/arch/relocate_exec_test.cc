// Execute tests: real functions (asm_fixture.h) relocated to trampoline memory near them
// (rel32 forms) and far from them (absolute jumps, scratch-register RIP-relative rewrite,
// red zone), run, and compared with the originals.
#include <sys/mman.h>

#include <gtest/gtest.h>

#include <cstring>
#include <span>
#include <vector>

#include "arch/x86_64/code_memory.h"
#include "arch/x86_64/plan.h"
#include "arch/x86_64/relocate.h"
#include "asm_fixture.h"

namespace hp::arch {
namespace {

using Fn = long (*)(long);

std::uint64_t addr(const void* p) {
  return reinterpret_cast<std::uint64_t>(p);
}

std::span<const std::uint8_t> bytes_of(Fn fn, const std::uint8_t* end) {
  auto* begin = reinterpret_cast<const std::uint8_t*>(fn);
  return {begin, static_cast<std::size_t>(end - begin)};
}

// Executable memory away from the test binary: plain mmap lands among the shared
// libraries, terabytes from a PIE executable. Mapped RW, written, then made RX.
class FarPage {
 public:
  FarPage() {
    p_ = mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT_NE(p_, MAP_FAILED);
  }
  ~FarPage() { munmap(p_, kSize); }
  std::uint64_t address() const { return addr(p_); }
  bool far_from(const void* p) const { return !in_rel32_reach(address(), addr(p)); }
  Fn install(const std::vector<std::uint8_t>& code) {
    EXPECT_EQ(mprotect(p_, kSize, PROT_READ | PROT_WRITE), 0);
    std::memcpy(p_, code.data(), code.size());
    EXPECT_EQ(mprotect(p_, kSize, PROT_READ | PROT_EXEC), 0);
    return reinterpret_cast<Fn>(p_);
  }

 private:
  static constexpr std::size_t kSize = 4096;
  void* p_;
};

struct Case {
  const char* name;
  Fn fn;
  const std::uint8_t* end;
  std::vector<long> inputs;
};

std::vector<Case> cases() {
  return {
      {"riprel", hp_fn_riprel, hp_fn_riprel_end, {0, 1, -5, 123456789}},
      {"loop", hp_fn_loop, hp_fn_loop_end, {0, 1, 2, 10, 100}},
      {"redzone", hp_fn_redzone, hp_fn_redzone_end, {0, 7, -1000}},
      {"cmp", hp_fn_cmp, hp_fn_cmp_end, {999, 1000, 1001}},
      {"call", hp_fn_call, hp_fn_call_end, {0, 3, -8}},
  };
}

void expect_same(const Case& c, Fn copy) {
  for (long x : c.inputs)
    EXPECT_EQ(copy(x), c.fn(x)) << c.name << "(" << x << ")";
}

TEST(ArchRelocateExec, ProloguesNearRunLikeTheOriginal) {
  CodeMemory mem;
  for (const Case& c : cases()) {
    auto plan = plan_displacement(bytes_of(c.fn, c.end), addr(reinterpret_cast<void*>(c.fn)), 0);
    ASSERT_TRUE(plan.ok()) << c.name << ": " << plan.error().message();
    auto slot = mem.allocate(plan->patch_address);
    ASSERT_TRUE(slot.ok()) << slot.error().message();
    auto r = relocate_with_jmp_back(plan->original, plan->patch_address, slot->address);
    ASSERT_TRUE(r.ok()) << c.name << ": " << r.error().message();
    ASSERT_TRUE(mem.write(slot.value(), r->code).ok());
    expect_same(c, reinterpret_cast<Fn>(slot->address));
    mem.free(slot.value());
  }
}

TEST(ArchRelocateExec, ProloguesFarRunLikeTheOriginal) {
  for (const Case& c : cases()) {
    FarPage page;
    if (!page.far_from(reinterpret_cast<void*>(c.fn))) GTEST_SKIP() << "no far address here";
    auto plan = plan_displacement(bytes_of(c.fn, c.end), addr(reinterpret_cast<void*>(c.fn)), 0);
    ASSERT_TRUE(plan.ok()) << c.name << ": " << plan.error().message();
    auto r = relocate_with_jmp_back(plan->original, plan->patch_address, page.address());
    ASSERT_TRUE(r.ok()) << c.name << ": " << r.error().message();
    expect_same(c, page.install(r->code));
  }
}

// Whole functions (all but the one with a call in the middle), so that every instruction,
// the loop and jrcxz rewrites included, runs from the copy.
TEST(ArchRelocateExec, WholeFunctionsNearAndFar) {
  CodeMemory mem;
  for (const Case& c : cases()) {
    if (std::string_view(c.name) == "call") continue;
    const auto bytes = bytes_of(c.fn, c.end);
    const std::uint64_t from = addr(reinterpret_cast<void*>(c.fn));

    auto slot = mem.allocate(from);
    ASSERT_TRUE(slot.ok());
    auto near = relocate(bytes, from, slot->address);
    ASSERT_TRUE(near.ok()) << c.name << ": " << near.error().message();
    ASSERT_TRUE(mem.write(slot.value(), near->code).ok());
    expect_same(c, reinterpret_cast<Fn>(slot->address));

    FarPage page;
    if (!page.far_from(reinterpret_cast<void*>(c.fn))) continue;
    auto far = relocate(bytes, from, page.address());
    ASSERT_TRUE(far.ok()) << c.name << ": " << far.error().message();
    EXPECT_GT(far->code.size(), bytes.size()) << c.name << ": the far forms are longer";
    expect_same(c, page.install(far->code));
  }
}

TEST(ArchRelocateExec, WholeFunctionWithACallInTheMiddleIsRefused) {
  auto r = relocate(bytes_of(hp_fn_call, hp_fn_call_end), addr(reinterpret_cast<void*>(hp_fn_call)),
                    0x1000);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), Errc::not_relocatable);
  EXPECT_NE(r.error().message().find("`call"), std::string::npos) << r.error().message();
}

}  // namespace
}  // namespace hp::arch
