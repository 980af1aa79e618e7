// Clobber tests for generated trampolines (STYLE.md item 10): a register harness loads a
// distinct value into every general register, the flags and xmm0-15, runs a trampoline,
// and checks what the dispatcher saw and that everything survived a dispatcher that
// clobbers every caller-saved register, the flags and every xmm register.
#include <sys/mman.h>

#include <gtest/gtest.h>

#include <cstring>
#include <span>
#include <vector>

#include "arch/asm_fixture.h"
#include "arch/x86_64/code_memory.h"
#include "arch/x86_64/frame.h"
#include "arch/x86_64/handler_stack.h"
#include "arch/x86_64/plan.h"
#include "core/x86_64/trampoline.h"
#include "hotprobe/regs.h"

namespace hp::core {
namespace {

using namespace arch;  // NOLINT: the pieces and plans the trampolines are made from

using hotprobe::Regs;

std::uint64_t addr(const void* p) {
  return reinterpret_cast<std::uint64_t>(p);
}

constexpr std::uint64_t kDF = 0x400;
// CF PF AF ZF SF OF DF and the always-one bit 1 (IF is set by the kernel in user mode).
constexpr std::uint64_t kFlagMask = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x800 | kDF | 0x2;

struct Seen {
  int calls = 0;
  Regs regs{};
  bool frame_aligned = false;
  bool df_clear = false;
  void* context = nullptr;
  std::uint64_t set_r12 = 0;  // when nonzero the handler writes it to regs->r12
  std::uint64_t return_to = 0;
};
Seen g_seen;

// Dirties everything a C++ function may dirty.
__attribute__((noinline)) void clobber_caller_saved() {
  asm volatile(
      "mov $0xbad0, %%rax\n mov $0xbad1, %%rcx\n mov $0xbad2, %%rdx\n mov $0xbad3, %%rsi\n"
      "mov $0xbad4, %%rdi\n mov $0xbad5, %%r8\n mov $0xbad6, %%r9\n mov $0xbad7, %%r10\n"
      "mov $0xbad8, %%r11\n cmp %%rax, %%rcx\n"
      "pcmpeqd %%xmm0, %%xmm0\n pcmpeqd %%xmm1, %%xmm1\n pcmpeqd %%xmm2, %%xmm2\n"
      "pcmpeqd %%xmm3, %%xmm3\n pcmpeqd %%xmm4, %%xmm4\n pcmpeqd %%xmm5, %%xmm5\n"
      "pcmpeqd %%xmm6, %%xmm6\n pcmpeqd %%xmm7, %%xmm7\n pcmpeqd %%xmm8, %%xmm8\n"
      "pcmpeqd %%xmm9, %%xmm9\n pcmpeqd %%xmm10, %%xmm10\n pcmpeqd %%xmm11, %%xmm11\n"
      "pcmpeqd %%xmm12, %%xmm12\n pcmpeqd %%xmm13, %%xmm13\n pcmpeqd %%xmm14, %%xmm14\n"
      "pcmpeqd %%xmm15, %%xmm15\n" ::
          : "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "xmm0", "xmm1", "xmm2",
            "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
            "xmm13", "xmm14", "xmm15", "cc", "memory");
}

void record(void* context, Regs* regs) {
  std::uint64_t flags;
  asm volatile("pushfq\n pop %0" : "=r"(flags));
  g_seen.df_clear = (flags & kDF) == 0;
  g_seen.frame_aligned = addr(regs) % 16 == 0;
  ++g_seen.calls;
  g_seen.context = context;
  g_seen.regs = *regs;
  if (g_seen.set_r12) regs->r12 = g_seen.set_r12;
  clobber_caller_saved();
}

extern "C" void entry_dispatcher(void* context, Regs* regs) {
  record(context, regs);
}

extern "C" std::uint64_t return_dispatcher(void* context, Regs* regs) {
  record(context, regs);
  return g_seen.return_to;
}

// The harness's inputs, distinct per register and per lane.
void set_inputs(std::uint64_t flags, std::uint64_t adjust) {
  for (unsigned i = 0; i < 16; ++i)
    hp_in[i] = 0x1000'0000'0000'0000ULL * (i + 1) + 0x1111 * i + 7;
  for (unsigned i = 0; i < 32; ++i)
    hp_in_xmm[i] = 0xa5a5'0000'0000'0000ULL + i;
  hp_in_flags = flags;
  hp_adjust = adjust;
  std::memset(hp_out, 0, sizeof hp_out);
  std::memset(hp_out_xmm, 0, sizeof hp_out_xmm);
  g_seen = Seen{};
}

std::uint64_t reg_in(const Regs& r, unsigned gpr) {
  const std::uint64_t v[16] = {r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi,
                               r.r8,  r.r9,  r.r10, r.r11, r.r12, r.r13, r.r14, r.r15};
  return v[gpr];
}

void expect_seen_inputs(const char* what) {
  EXPECT_EQ(g_seen.calls, 1) << what;
  EXPECT_TRUE(g_seen.frame_aligned) << what << ": Regs frame (rsp at the call) not 16-aligned";
  EXPECT_TRUE(g_seen.df_clear) << what << ": DF set inside the dispatcher";
  for (unsigned i = 0; i < 16; ++i) {
    if (i == rsp) continue;
    EXPECT_EQ(reg_in(g_seen.regs, i), hp_in[i]) << what << ": register " << i;
  }
}

void expect_xmm_survived(const char* what) {
  for (unsigned i = 0; i < 32; ++i)
    EXPECT_EQ(hp_out_xmm[i], hp_in_xmm[i]) << what << " xmm lane " << i;
}

std::span<const std::uint8_t> site_bytes() {
  return {hp_fake_site, static_cast<std::size_t>(hp_fake_site_end - hp_fake_site)};
}

DisplacementPlan site_plan() {
  auto p = plan_displacement(site_bytes(), addr(hp_fake_site), 0);
  EXPECT_TRUE(p.ok()) << p.error().message();
  EXPECT_EQ(p->length, 8u);  // lea rax, [rax+1]; lea rbx, [rbx+2]
  return p.value();
}

struct EntryVariant {
  const char* name;
  bool flags_live;
  std::uint64_t adjust;
  bool far;  // trampoline far from the site and the dispatcher: absolute call and jmp back
};

class ArchEntryTrampolineExec : public ::testing::TestWithParam<EntryVariant> {};

TEST_P(ArchEntryTrampolineExec, EveryRegisterSeenAndSurvives) {
  const EntryVariant v = GetParam();
  DisplacementPlan plan = site_plan();
  plan.flags_live = v.flags_live;

  CodeMemory mem;
  void* far_page = nullptr;
  std::uint64_t at;
  CodeSlot slot;
  if (v.far) {
    far_page = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(far_page, MAP_FAILED);
    at = addr(far_page);
    if (in_rel32_reach(at, addr(hp_fake_site))) GTEST_SKIP() << "no far address here";
  } else {
    auto s = mem.allocate(plan.patch_address);
    ASSERT_TRUE(s.ok()) << s.error().message();
    slot = s.value();
    at = slot.address;
  }
  int context_object = 0;
  EntryTrampolineSpec spec{at, addr(&context_object),
                           addr(reinterpret_cast<void*>(entry_dispatcher)), true};
  auto t = make_entry_trampoline(spec, plan);
  ASSERT_TRUE(t.ok()) << t.error().message();
  if (v.far) {
    std::memcpy(far_page, t->code.data(), t->code.size());
    ASSERT_EQ(mprotect(far_page, 4096, PROT_READ | PROT_EXEC), 0);
  } else {
    ASSERT_TRUE(mem.write(slot, t->code).ok());
  }
  EXPECT_EQ(t->map.front().relocated, t->relocated_offset);

  // Flags: with DF set when flags are live (the trampoline must clear it for the
  // dispatcher and give it back); at an entry the ABI guarantees DF=0.
  const std::uint64_t flags =
      v.flags_live ? (0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x800 | kDF | 0x202) : (0x1 | 0x40 | 0x202);
  set_inputs(flags, v.adjust);
  hp_run_call(at);

  expect_seen_inputs(v.name);
  const std::uint64_t site_rsp = hp_saved_rsp - v.adjust - 8;  // the call pushed a return address
  EXPECT_EQ(g_seen.regs.rsp, site_rsp);
  EXPECT_EQ(g_seen.regs.rip, addr(hp_fake_site));
  EXPECT_EQ(g_seen.context, &context_object);
  if (v.flags_live) {
    EXPECT_EQ(g_seen.regs.rflags & kFlagMask, flags & kFlagMask);
  }

  // After the trampoline: the displaced lea's ran once, everything else is as loaded.
  for (unsigned i = 0; i < 16; ++i) {
    if (i == rsp) continue;
    const std::uint64_t expected = hp_in[i] + (i == rax ? 1 : i == rbx ? 2 : 0);
    EXPECT_EQ(hp_out[i], expected) << v.name << ": register " << i;
  }
  EXPECT_EQ(hp_out[rsp], site_rsp);
  if (v.flags_live) {
    EXPECT_EQ(hp_out_flags & kFlagMask, flags & kFlagMask);
  }
  expect_xmm_survived(v.name);
  for (unsigned j = 0; j < 16; ++j) {
    EXPECT_EQ(hp_out_redzone[j], 0x5a5a0000u + 15 - j) << v.name << ": red zone qword " << j;
  }
  if (far_page) munmap(far_page, 4096);
}

INSTANTIATE_TEST_SUITE_P(Arch, ArchEntryTrampolineExec,
                         ::testing::Values(EntryVariant{"entry", false, 0, false},
                                           EntryVariant{"entry_misaligned", false, 8, false},
                                           EntryVariant{"flags_live", true, 0, false},
                                           EntryVariant{"flags_live_misaligned", true, 8, false},
                                           EntryVariant{"far", true, 8, true}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(ArchEntryTrampolineExecWriteBack, HandlerChangesReachTheProgram) {
  DisplacementPlan plan = site_plan();
  CodeMemory mem;
  auto slot = mem.allocate(plan.patch_address);
  ASSERT_TRUE(slot.ok());
  auto t = make_entry_trampoline(
      {slot->address, 0, addr(reinterpret_cast<void*>(entry_dispatcher))}, plan);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(mem.write(slot.value(), t->code).ok());
  set_inputs(0x202, 0);
  g_seen.set_r12 = 0x1234'5678;
  hp_run_call(slot->address);
  EXPECT_EQ(hp_out[r12], 0x1234'5678u);
}

TEST(ArchReturnTrampolineExec, SavesEverythingAndJumpsToTheOriginalReturnAddress) {
  for (std::uint64_t adjust : {0, 8}) {
    CodeMemory mem;
    auto slot = mem.allocate(addr(hp_landing));
    ASSERT_TRUE(slot.ok());
    int context_object = 0;
    auto code = make_return_trampoline(
        {slot->address, addr(&context_object), addr(reinterpret_cast<void*>(return_dispatcher))});
    ASSERT_TRUE(code.ok());
    ASSERT_TRUE(mem.write(slot.value(), code.value()).ok());
    set_inputs(0x202, adjust);
    g_seen.return_to = addr(hp_landing);
    // As if a function had just executed `ret` into the trampoline.
    hp_run_jmp(slot->address);
    expect_seen_inputs("return");
    const std::uint64_t rsp_after_ret = hp_saved_rsp - adjust;
    EXPECT_EQ(g_seen.regs.rsp, rsp_after_ret);
    EXPECT_EQ(g_seen.regs.rip, slot->address);
    EXPECT_EQ(g_seen.context, &context_object);
    for (unsigned i = 0; i < 16; ++i) {
      if (i == rsp) continue;
      EXPECT_EQ(hp_out[i], hp_in[i]) << "register " << i;
    }
    EXPECT_EQ(hp_out[rsp], rsp_after_ret);
    expect_xmm_survived("return");
  }
}

TEST(ArchInt3CopyExec, RelocatedInstructionThenJumpBack) {
  auto p = plan_int3(site_bytes(), addr(hp_fake_site), 0);
  ASSERT_TRUE(p.ok());
  CodeMemory mem;
  auto slot = mem.allocate(p->probe_address);
  ASSERT_TRUE(slot.ok());
  auto copy = make_int3_copy(p.value(), slot->address);
  ASSERT_TRUE(copy.ok());
  ASSERT_TRUE(mem.write(slot.value(), copy->code).ok());
  set_inputs(0x202, 0);
  hp_run_call(slot->address);  // lea rax, [rax+1] in the copy; lea rbx, [rbx+2] back home
  EXPECT_EQ(hp_out[rax], hp_in[rax] + 1);
  EXPECT_EQ(hp_out[rbx], hp_in[rbx] + 2);
  EXPECT_EQ(hp_out[rcx], hp_in[rcx]);
}

// The whole flow the core will run, on a function that lives in trampoline memory so that
// the test may patch it: plan, trampoline, the patch, hits, the original bytes back.
int g_hits = 0;
long g_arg = 0;
extern "C" void counting_dispatcher(void*, Regs* regs) {
  ++g_hits;
  g_arg = static_cast<long>(regs->arg(0));
}

// The site's bytes at once: nothing runs the function meanwhile (core/text_patch.cc does
// it step by step for live code).
void write_site(CodeMemory& mem, const CodeSlot& site, std::uint64_t address,
                std::span<const std::uint8_t> bytes) {
  ASSERT_TRUE(mem.write_at(site, static_cast<std::uint32_t>(address - site.address), bytes).ok());
}

TEST(ArchPatchFlowExec, AttachHitDetach) {
  CodeMemory mem;
  auto site = mem.allocate(addr(reinterpret_cast<void*>(hp_fn_riprel)));
  ASSERT_TRUE(site.ok());
  const auto* fn = reinterpret_cast<const std::uint8_t*>(hp_fn_riprel);
  const std::span<const std::uint8_t> original(fn, static_cast<std::size_t>(hp_fn_riprel_end - fn));
  auto moved = relocate(original, addr(fn), site->address);
  ASSERT_TRUE(moved.ok());
  ASSERT_TRUE(mem.write(site.value(), moved->code).ok());
  auto f = reinterpret_cast<long (*)(long)>(site->address);
  ASSERT_EQ(f(5), hp_value + 5);

  auto plan = plan_displacement(moved->code, site->address, 0);
  ASSERT_TRUE(plan.ok()) << plan.error().message();
  auto tslot = mem.allocate(plan->patch_address);
  ASSERT_TRUE(tslot.ok());
  auto t = make_entry_trampoline(
      {tslot->address, 0, addr(reinterpret_cast<void*>(counting_dispatcher))}, plan.value());
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(mem.write(tslot.value(), t->code).ok());

  std::vector<std::uint8_t> patch(plan->length);
  ASSERT_TRUE(write_jmp_patch_bytes(plan->patch_address, plan->length, tslot->address, patch).ok());
  write_site(mem, site.value(), plan->patch_address, patch);
  g_hits = 0;
  EXPECT_EQ(f(5), hp_value + 5);
  EXPECT_EQ(f(-3), hp_value - 3);
  EXPECT_EQ(g_hits, 2);
  EXPECT_EQ(g_arg, -3);

  write_site(mem, site.value(), plan->patch_address, plan->original);
  EXPECT_EQ(f(1), hp_value + 1);
  EXPECT_EQ(g_hits, 2);
}

}  // namespace
}  // namespace hp::core
