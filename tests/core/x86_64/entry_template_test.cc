// EntryTrampolineBuilder builds the same bytes as make_entry_trampoline() for every kind of
// site: at an entry with and without a landing, in mid-function (flags live), with a far
// landing target, without the fast path, with vector saves, and with displaced
// instructions that the relocator rewrites (a jcc, a RIP-relative load).
#include <gtest/gtest.h>

#include <vector>

#include "arch/x86_64/frame.h"
#include "arch/x86_64/handler_stack.h"
#include "core/x86_64/trampoline.h"

namespace hp::core {
namespace {

using namespace arch;  // NOLINT: the pieces and plans the trampolines are made from

using Bytes = std::vector<std::uint8_t>;
constexpr std::uint64_t kFn = 0x1000'0000;

// +0 55 push rbp; +1 48 89 e5 mov rbp, rsp; +4 48 83 ec 10 sub rsp, 16; +8 c9 leave; +9 c3 ret
const Bytes kPlain{0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xec, 0x10, 0xc9, 0xc3};
// +0 48 8b 05 10 00 00 00 mov rax, [rip+0x10]; +7 85 c0 test eax, eax; +9 74 02 je +0xd;
// +b 31 c0 xor eax, eax; +d c3 ret
const Bytes kRipLoad{0x48, 0x8b, 0x05, 0x10, 0x00, 0x00, 0x00,
                     0x85, 0xc0, 0x74, 0x02, 0x31, 0xc0, 0xc3};
// +0 85 ff test edi, edi; +2 74 05 je +9; +4 b8 01 00 00 00 mov eax, 1; +9 c3 ret
const Bytes kJcc{0x85, 0xff, 0x74, 0x05, 0xb8, 0x01, 0x00, 0x00, 0x00, 0xc3};

FastEntry some_fast_entry() {
  FastEntry f;
  f.ts_rec = -0x100;
  f.ts_in_handler = -0xf8;
  f.ts_ready = -0xf6;
  f.ready_bit = 1;
  f.rec_hits = 0x18;
  f.tt_word = -0x80;
  f.tt_enter = 0x1'0000'0000;
  f.arr_one_entry = 7;
  f.arr_cookie = 0x18;
  f.arr_handler = 0x10;
  f.gp_futex = 0x7f12'3456'7000;
  f.locked_dispatcher = kFn + 0x40'0000;
  return f;
}

struct Kind {
  const char* name;
  const Bytes* fn;
  std::uint64_t offset;
  bool fast;
  bool landing;
  std::uint64_t landing_target;  // when landing
  std::uint64_t dispatcher;
  bool save_vector;
  bool expect_template;  // the builder should copy its template
};

void expect_same_as_make_entry_trampoline(const Kind& k) {
  SCOPED_TRACE(k.name);
  EntryTrampolineBuilder builder;
  FastEntry fast = some_fast_entry();
  for (unsigned i = 0; i < 6; i++) {
    // Sites at different places: the function, the trampoline's slot, the context.
    const std::uint64_t fn = kFn + 0x1000 * i + 0x30 * (i % 3);
    auto plan = plan_displacement(*k.fn, fn, k.offset);
    ASSERT_TRUE(plan.ok()) << plan.error().message();
    EntryTrampolineSpec spec;
    spec.address = kFn + 0x10'0000 + 768 * i * (i + 7);
    spec.context = 0x5555'0000'1000 + 0x230 * i;
    spec.dispatcher = k.dispatcher;
    spec.save_vector = k.save_vector;
    if (k.fast) {
      fast.consumers = spec.context + 0x48;
      spec.fast = &fast;
    }
    if (k.landing) spec.landing_target = k.landing_target;
    auto want = make_entry_trampoline(spec, *plan);
    auto got = builder.build(spec, *plan);
    ASSERT_EQ(want.ok(), got.ok());
    if (!want.ok()) {
      EXPECT_EQ(want.error().message(), got.error().message());
      continue;
    }
    EXPECT_EQ(got->code, want->code) << "site " << i;
    EXPECT_EQ(got->relocated_offset, want->relocated_offset);
    EXPECT_EQ(got->landing_offset, want->landing_offset);
    EXPECT_EQ(got->map, want->map);
    builder.recycle(std::move(*got));  // the next site is built in these buffers
  }
  if (k.expect_template) {
    EXPECT_EQ(builder.from_template(), 5u);  // all but the first, which made the template
  }
}

constexpr std::uint64_t kNearDispatcher = kFn + 0x20'0000;
constexpr std::uint64_t kFarDispatcher = 0x7f00'0000'0000;
constexpr std::uint64_t kNearLanding = kFn + 0x30'0000;
constexpr std::uint64_t kFarLanding = 0x7f00'1000'0000;

TEST(ArchEntryTrampolineBuilder, SameBytesAsMakeEntryTrampoline) {
  const Kind kinds[] = {
      {"entry, landing, fast", &kPlain, 0, true, true, kNearLanding, kNearDispatcher, false, true},
      {"entry, no landing, fast", &kPlain, 0, true, false, 0, kNearDispatcher, false, true},
      {"mid-function, flags live", &kPlain, 1, true, false, 0, kNearDispatcher, false, true},
      // jmp [rip+0]; .quad target: a labelled absolute, still far for every site
      {"far landing target", &kPlain, 0, true, true, kFarLanding, kNearDispatcher, false, true},
      {"fast off, near dispatcher", &kPlain, 0, false, true, kNearLanding, kNearDispatcher, false,
       true},
      {"fast off, far dispatcher", &kPlain, 0, false, true, kNearLanding, kFarDispatcher, false,
       true},
      {"vector saves", &kPlain, 0, false, true, kNearLanding, kNearDispatcher, true, true},
      {"RIP-relative load", &kRipLoad, 0, true, true, kNearLanding, kNearDispatcher, false, true},
      {"jcc in the displaced bytes", &kJcc, 0, true, true, kNearLanding, kNearDispatcher, false,
       true},
      {"landing refused in mid-function", &kPlain, 1, true, true, kNearLanding, kNearDispatcher,
       false, false},
  };
  for (const Kind& k : kinds)
    expect_same_as_make_entry_trampoline(k);
}

// A site whose rel32 back to the function would not reach from the template's layout
// takes the full path (which picks jmp [rip+0]), and the bytes are still the same.
TEST(ArchEntryTrampolineBuilder, OutOfReachSiteTakesTheFullPath) {
  EntryTrampolineBuilder builder;
  FastEntry fast = some_fast_entry();
  const std::uint64_t fns[] = {kFn, kFn + 0x1000, 0x7f00'2000'0000};
  unsigned i = 0;
  for (std::uint64_t fn : fns) {
    auto plan = plan_displacement(kPlain, fn, 0);
    ASSERT_TRUE(plan.ok());
    EntryTrampolineSpec spec;
    spec.address = kFn + 0x10'0000;
    spec.context = 0x5555'0000'1000;
    spec.dispatcher = kNearDispatcher;
    spec.save_vector = false;
    fast.consumers = spec.context + 0x48;
    spec.fast = &fast;
    auto want = make_entry_trampoline(spec, *plan);
    auto got = builder.build(spec, *plan);
    ASSERT_TRUE(want.ok() && got.ok());
    EXPECT_EQ(got->code, want->code) << "site " << i++;
  }
  EXPECT_EQ(builder.from_template(), 1u);  // the second; the first made it
}

}  // namespace
}  // namespace hp::core
