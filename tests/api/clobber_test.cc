// Clobber tests through the engine (STYLE.md item 10): assembly targets load a known
// pattern into every general register, the flags and the vector registers, a probe fires
// (at a mid-function offset, or at a function's entry with a return probe) with handlers
// that clobber everything the ABI lets a function clobber, and the target stores what it
// sees afterwards. At a mid-function probe everything must survive; at an entry probe the
// arguments, rax (al = vector-argument count of a varargs call), r10 (static chain) and
// every callee-saved register; after a return probe the return registers (rax, rdx,
// xmm0, xmm1) and the callee-saved registers.
//
// ymm upper halves: the jmp trampoline saves xmm0-15 only (ProbeSpec::vector_registers).
// A handler built for SSE (this file is, as is the engine) leaves the upper halves alone,
// so they survive; a handler that runs a VEX instruction that zeroes them (vzeroupper,
// or any 128-bit VEX op) loses them in jmp mode, while in int3 mode the kernel's
// xsave/xrstor around the signal keeps them. HandlerThatZeroesUpperHalves records which.
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include <gtest/gtest.h>

#include "internal_probes.h"

#include "hotprobe/probe.h"

extern "C" {
// Register order in these arrays: rax rbx rcx rdx rsi rdi rbp r8 r9 r10 r11 r12 r13 r14 r15.
alignas(64) std::uint64_t hp_cl_gpr_in[15];
alignas(64) std::uint64_t hp_cl_gpr_out[15];   // at the target (after the probe)
alignas(64) std::uint64_t hp_cl_gpr_post[15];  // in the caller, after the target returned
std::uint64_t hp_cl_flags_in, hp_cl_flags_out;
std::uint64_t hp_cl_rsp_before, hp_cl_rsp_inside, hp_cl_rsp_after;
alignas(64) std::uint8_t hp_cl_vec_in[16][32];
alignas(64) std::uint8_t hp_cl_vec_out[16][32];
alignas(64) std::uint8_t hp_cl_vec_post[16][32];
alignas(64) std::uint64_t hp_cl_ret_in[2];         // rax, rdx returned by the entry target
alignas(64) std::uint8_t hp_cl_ret_vec_in[2][16];  // xmm0, xmm1 returned
}

// clang-format off
asm(R"(
  .pushsection .text

  .macro HP_CL_LOAD_GPRS
  movq hp_cl_gpr_in+0(%rip), %rax
  movq hp_cl_gpr_in+8(%rip), %rbx
  movq hp_cl_gpr_in+16(%rip), %rcx
  movq hp_cl_gpr_in+24(%rip), %rdx
  movq hp_cl_gpr_in+32(%rip), %rsi
  movq hp_cl_gpr_in+40(%rip), %rdi
  movq hp_cl_gpr_in+48(%rip), %rbp
  movq hp_cl_gpr_in+56(%rip), %r8
  movq hp_cl_gpr_in+64(%rip), %r9
  movq hp_cl_gpr_in+72(%rip), %r10
  movq hp_cl_gpr_in+80(%rip), %r11
  movq hp_cl_gpr_in+88(%rip), %r12
  movq hp_cl_gpr_in+96(%rip), %r13
  movq hp_cl_gpr_in+104(%rip), %r14
  movq hp_cl_gpr_in+112(%rip), %r15
  .endm

  .macro HP_CL_STORE_GPRS to
  movq %rax, \to+0(%rip)
  movq %rbx, \to+8(%rip)
  movq %rcx, \to+16(%rip)
  movq %rdx, \to+24(%rip)
  movq %rsi, \to+32(%rip)
  movq %rdi, \to+40(%rip)
  movq %rbp, \to+48(%rip)
  movq %r8, \to+56(%rip)
  movq %r9, \to+64(%rip)
  movq %r10, \to+72(%rip)
  movq %r11, \to+80(%rip)
  movq %r12, \to+88(%rip)
  movq %r13, \to+96(%rip)
  movq %r14, \to+104(%rip)
  movq %r15, \to+112(%rip)
  .endm

  .macro HP_CL_LOAD_VEC avx
  .irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
  .if \avx
  vmovdqu hp_cl_vec_in+\i*32(%rip), %ymm\i
  .else
  movdqu hp_cl_vec_in+\i*32(%rip), %xmm\i
  .endif
  .endr
  .endm

  .macro HP_CL_STORE_VEC avx, to
  .irp i,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
  .if \avx
  vmovdqu %ymm\i, \to+\i*32(%rip)
  .else
  movdqu %xmm\i, \to+\i*32(%rip)
  .endif
  .endr
  .endm

  .macro HP_CL_PUSH_CALLEE
  pushq %rbx
  pushq %rbp
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  .endm
  .macro HP_CL_POP_CALLEE
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbp
  popq %rbx
  .endm

  # void hp_cl_mid{,_avx}(void): patterns in, probe at hp_cl_mid{,_avx}_probe, state out.
  .macro HP_CL_MID name, avx
  .p2align 4
  .globl \name
  .type \name, @function
\name:
  HP_CL_PUSH_CALLEE
  HP_CL_LOAD_VEC \avx
  HP_CL_LOAD_GPRS
  movq %rsp, hp_cl_rsp_before(%rip)
  pushq hp_cl_flags_in(%rip)
  popfq
  .globl \name\()_probe
\name\()_probe:
  nopl 0x0(%rax,%rax,1)
  nopl 0x0(%rax,%rax,1)
  pushfq
  popq hp_cl_flags_out(%rip)
  cld
  movq %rsp, hp_cl_rsp_after(%rip)
  HP_CL_STORE_GPRS hp_cl_gpr_out
  HP_CL_STORE_VEC \avx, hp_cl_vec_out
  HP_CL_POP_CALLEE
  .if \avx
  vzeroupper
  .endif
  ret
  .size \name, .-\name
  .endm

  HP_CL_MID hp_cl_mid, 0
  HP_CL_MID hp_cl_mid_avx, 1

  # The entry target: stores what it sees at its first instruction, then returns the
  # patterns of hp_cl_ret_in / hp_cl_ret_vec_in.
  .macro HP_CL_TARGET name, avx
  .p2align 4
  .globl \name
  .type \name, @function
\name:
  HP_CL_STORE_GPRS hp_cl_gpr_out
  movq %rsp, hp_cl_rsp_inside(%rip)
  pushfq
  popq hp_cl_flags_out(%rip)
  HP_CL_STORE_VEC \avx, hp_cl_vec_out
  movq hp_cl_ret_in+0(%rip), %rax
  movq hp_cl_ret_in+8(%rip), %rdx
  movdqu hp_cl_ret_vec_in+0(%rip), %xmm0
  movdqu hp_cl_ret_vec_in+16(%rip), %xmm1
  ret
  .size \name, .-\name
  .endm

  HP_CL_TARGET hp_cl_target, 0
  HP_CL_TARGET hp_cl_target_avx, 1

  # void hp_cl_caller{,_avx}(void): patterns in, call the target, state after return out.
  .macro HP_CL_CALLER name, target, avx
  .p2align 4
  .globl \name
  .type \name, @function
\name:
  HP_CL_PUSH_CALLEE
  subq $8, %rsp
  cld
  HP_CL_LOAD_VEC \avx
  HP_CL_LOAD_GPRS
  movq %rsp, hp_cl_rsp_before(%rip)
  call \target
  movq %rsp, hp_cl_rsp_after(%rip)
  HP_CL_STORE_GPRS hp_cl_gpr_post
  HP_CL_STORE_VEC \avx, hp_cl_vec_post
  addq $8, %rsp
  HP_CL_POP_CALLEE
  .if \avx
  vzeroupper
  .endif
  ret
  .size \name, .-\name
  .endm

  HP_CL_CALLER hp_cl_caller, hp_cl_target, 0
  HP_CL_CALLER hp_cl_caller_avx, hp_cl_target_avx, 1

  .popsection
)");
// clang-format on

extern "C" {
void hp_cl_mid();
void hp_cl_mid_probe();
void hp_cl_mid_avx();
void hp_cl_mid_avx_probe();
void hp_cl_target();
void hp_cl_target_avx();
void hp_cl_caller();
void hp_cl_caller_avx();

__attribute__((noinline, used)) long hp_cl_six(long a, long b, long c, long d, long e, long f) {
  asm volatile("" ::: "memory");
  using U = unsigned long;  // wraps: the extremes below must not be undefined behaviour
  return static_cast<long>(U(a) * 3 + U(b) * 5 - U(c) * 7 + U(d ^ e) - U(f));
}
}

namespace {

[[maybe_unused]] ::testing::Environment* const g_install_internal_probes =
    ::testing::AddGlobalTestEnvironment(new hp_test::InternalProbesEnvironment(":hp_cl_six"));

using hotprobe::Engine;
using hotprobe::Hit;
using hotprobe::ProbeSpec;
using hotprobe::Regs;

const char* const kGprName[15] = {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8",
                                  "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};
enum Gpr { RAX, RBX, RCX, RDX, RSI, RDI, RBP, R8, R9, R10, R11, R12, R13, R14, R15 };

std::uint64_t regs_field(const Regs& r, int i) {
  const std::uint64_t v[15] = {r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8,
                               r.r9,  r.r10, r.r11, r.r12, r.r13, r.r14, r.r15};
  return v[i];
}

// Arithmetic flags and DF: CF PF AF ZF SF DF OF.
constexpr std::uint64_t kFlagMask = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x400 | 0x800;
constexpr std::uint64_t kDF = 0x400;

bool have_avx() {
  return __builtin_cpu_supports("avx");
}

void fill_patterns(unsigned salt) {
  for (int i = 0; i < 15; i++) {
    // Not addresses: a handler or unwinder that follows them faults at once.
    hp_cl_gpr_in[i] = 0xC1ull << 56 | std::uint64_t{salt} << 40 | std::uint64_t(i + 1) * 0x010101u;
  }
  for (int r = 0; r < 16; r++)
    for (int b = 0; b < 32; b++)
      hp_cl_vec_in[r][b] = static_cast<std::uint8_t>(0x40 + r * 7 + b * 3 + salt);
  hp_cl_ret_in[0] = 0x7E7E000000000001ull + salt;
  hp_cl_ret_in[1] = 0x7D7D000000000002ull + salt;
  for (int r = 0; r < 2; r++)
    for (int b = 0; b < 16; b++)
      hp_cl_ret_vec_in[r][b] = static_cast<std::uint8_t>(0xA0 + r * 16 + b + salt);
  std::memset(hp_cl_gpr_out, 0, sizeof hp_cl_gpr_out);
  std::memset(hp_cl_gpr_post, 0, sizeof hp_cl_gpr_post);
  std::memset(hp_cl_vec_out, 0, sizeof hp_cl_vec_out);
  std::memset(hp_cl_vec_post, 0, sizeof hp_cl_vec_post);
  hp_cl_flags_out = hp_cl_rsp_before = hp_cl_rsp_inside = hp_cl_rsp_after = 0;
}

// What the handlers saw, and how they clobber.
struct Seen {
  Regs entry{}, ret{};
  int entries = 0, returns = 0;
  std::uint64_t handler_flags = 0;  // rflags inside the entry handler (DF must be clear)
  std::uint64_t data_at_return = 0;
  bool zero_upper = false;  // run vzeroupper in the handler (AVX only)
};
Seen g_seen;
volatile double g_double_sink;

// Everything a function may clobber: the scratch GPRs, xmm0-15, the arithmetic flags;
// then some real SSE arithmetic.
__attribute__((noinline)) void clobber_everything() {
  asm volatile(
      "movq $-1, %%rax\n\tmovq $-1, %%rcx\n\tmovq $-1, %%rdx\n\tmovq $-1, %%rsi\n\t"
      "movq $-1, %%rdi\n\tmovq $-1, %%r8\n\tmovq $-1, %%r9\n\tmovq $-1, %%r10\n\t"
      "movq $-1, %%r11\n\t"
      "pcmpeqd %%xmm0, %%xmm0\n\tpcmpeqd %%xmm1, %%xmm1\n\tpcmpeqd %%xmm2, %%xmm2\n\t"
      "pcmpeqd %%xmm3, %%xmm3\n\tpcmpeqd %%xmm4, %%xmm4\n\tpcmpeqd %%xmm5, %%xmm5\n\t"
      "pcmpeqd %%xmm6, %%xmm6\n\tpcmpeqd %%xmm7, %%xmm7\n\tpcmpeqd %%xmm8, %%xmm8\n\t"
      "pcmpeqd %%xmm9, %%xmm9\n\tpcmpeqd %%xmm10, %%xmm10\n\tpcmpeqd %%xmm11, %%xmm11\n\t"
      "pcmpeqd %%xmm12, %%xmm12\n\tpcmpeqd %%xmm13, %%xmm13\n\tpcmpeqd %%xmm14, %%xmm14\n\t"
      "pcmpeqd %%xmm15, %%xmm15\n\t"
      "xorl %%eax, %%eax\n\t"  // ZF=1 PF=1 CF=0 SF=0 OF=0
      :
      :
      : "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "xmm0", "xmm1", "xmm2", "xmm3",
        "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14",
        "xmm15", "cc", "memory");
  double acc[8];
  for (int i = 0; i < 8; i++)
    acc[i] = 1.0 + i;
  for (int k = 0; k < 200; k++)
    for (int i = 0; i < 8; i++)
      acc[i] = acc[i] * 1.000001 + acc[(i + 3) & 7] * 0.5 - k;
  double s = 0;
  for (double a : acc)
    s += a;
  g_double_sink = s;
  if (g_seen.zero_upper) asm volatile("vzeroupper" ::: "memory");
}

void on_entry(Hit& h) {
  std::uint64_t fl;
  asm volatile("pushfq\n\tpopq %0" : "=r"(fl));
  g_seen.handler_flags = fl;
  g_seen.entry = *h.regs;
  g_seen.entries++;
  if (h.data) *h.data = h.regs->arg(0) ^ 0x5555;
  clobber_everything();
}
void on_return(Hit& h) {
  g_seen.ret = *h.regs;
  g_seen.returns++;
  if (h.data) g_seen.data_at_return = *h.data;
  clobber_everything();
}

std::uintptr_t addr(void (*f)()) {
  return reinterpret_cast<std::uintptr_t>(f);
}

std::string vec_hex(const std::uint8_t* p, int n) {
  std::string s;
  char b[4];
  for (int i = n - 1; i >= 0; i--) {
    std::snprintf(b, sizeof b, "%02x", p[i]);
    s += b;
  }
  return s;
}

void expect_vec(const std::uint8_t (&got)[16][32], int reg, int lo, int hi, const char* what) {
  EXPECT_EQ(std::memcmp(&got[reg][lo], &hp_cl_vec_in[reg][lo], hi - lo), 0)
      << what << " of " << (hi > 16 ? "ymm" : "xmm") << reg << " bytes [" << lo << "," << hi
      << "): got " << vec_hex(&got[reg][lo], hi - lo) << " want "
      << vec_hex(&hp_cl_vec_in[reg][lo], hi - lo);
}

struct Mode {
  bool int3;
  bool avx;
  unsigned flags;  // 0: CF PF AF SF DF OF set, ZF clear; 1: ZF alone
};

std::string mode_name(const ::testing::TestParamInfo<Mode>& i) {
  return std::string(i.param.int3 ? "int3" : "jmp") + (i.param.avx ? "_avx" : "_sse") + "_flags" +
         std::to_string(i.param.flags);
}

class MidFunction : public ::testing::TestWithParam<Mode> {};

TEST_P(MidFunction, EveryRegisterFlagsAndVectorsSurvive) {
  const Mode m = GetParam();
  if (m.avx && !have_avx()) GTEST_SKIP() << "this CPU has no AVX";
  void (*fn)() = m.avx ? hp_cl_mid_avx : hp_cl_mid;
  void (*probe)() = m.avx ? hp_cl_mid_avx_probe : hp_cl_mid_probe;
  const std::uint64_t off = addr(probe) - addr(fn);
  auto e = Engine::create().value();
  g_seen = Seen{};
  ProbeSpec s;
  s.target = std::string(m.avx ? ":hp_cl_mid_avx+" : ":hp_cl_mid+") + std::to_string(off);
  s.on_entry = &on_entry;
  s.force_int3 = m.int3;
  s.allow_int3 = m.int3;
  s.vector_registers = true;
  const auto before = e->stats();
  auto h = e->attach(s);
  ASSERT_TRUE(h.ok()) << h.error().message();
  ASSERT_EQ((m.int3 ? e->stats().sites_int3 - before.sites_int3
                    : e->stats().sites_jmp - before.sites_jmp),
            1u);

  for (unsigned salt = 1; salt <= 3; salt++) {
    SCOPED_TRACE("salt " + std::to_string(salt));
    fill_patterns(salt);
    hp_cl_flags_in = m.flags == 0 ? 0x2 | 0x1 | 0x4 | 0x10 | 0x80 | kDF | 0x800 : 0x2 | 0x40;
    const int entries = g_seen.entries;
    fn();
    ASSERT_EQ(g_seen.entries, entries + 1) << "the probe did not fire";
    for (int i = 0; i < 15; i++) {
      EXPECT_EQ(hp_cl_gpr_out[i], hp_cl_gpr_in[i]) << kGprName[i] << " changed across the probe";
      EXPECT_EQ(regs_field(g_seen.entry, i), hp_cl_gpr_in[i]) << "Regs." << kGprName[i];
    }
    EXPECT_EQ(hp_cl_flags_out & kFlagMask, hp_cl_flags_in & kFlagMask)
        << std::hex << "flags changed across the probe: got 0x" << hp_cl_flags_out << " want 0x"
        << hp_cl_flags_in;
    EXPECT_EQ(g_seen.entry.rflags & kFlagMask, hp_cl_flags_in & kFlagMask)
        << std::hex << "Regs.rflags: got 0x" << g_seen.entry.rflags;
    EXPECT_EQ(g_seen.handler_flags & kDF, 0u) << "the handler ran with DF set (ABI: clear)";
    EXPECT_EQ(hp_cl_rsp_after, hp_cl_rsp_before);
    EXPECT_EQ(g_seen.entry.rsp, hp_cl_rsp_before);
    EXPECT_EQ(g_seen.entry.rip, addr(probe));
    for (int r = 0; r < 16; r++) {
      expect_vec(hp_cl_vec_out, r, 0, 16, "low half");
      if (m.avx) expect_vec(hp_cl_vec_out, r, 16, 32, "upper half (SSE-only handler)");
    }
  }
  ASSERT_TRUE(e->detach(*h).ok());
}

std::vector<Mode> mid_modes() {
  std::vector<Mode> v;
  for (bool int3 : {false, true})
    for (bool avx : {false, true})
      for (unsigned f : {0u, 1u})
        v.push_back({int3, avx, f});
  return v;
}
INSTANTIATE_TEST_SUITE_P(Modes, MidFunction, ::testing::ValuesIn(mid_modes()), mode_name);

class EntryAndReturn : public ::testing::TestWithParam<Mode> {};

TEST_P(EntryAndReturn, ArgumentsCalleeSavedAndReturnRegistersSurvive) {
  const Mode m = GetParam();
  if (m.avx && !have_avx()) GTEST_SKIP() << "this CPU has no AVX";
  void (*caller)() = m.avx ? hp_cl_caller_avx : hp_cl_caller;
  void (*target)() = m.avx ? hp_cl_target_avx : hp_cl_target;
  auto e = Engine::create().value();
  g_seen = Seen{};
  ProbeSpec s;
  s.target = m.avx ? ":hp_cl_target_avx" : ":hp_cl_target";
  s.on_entry = &on_entry;
  s.on_return = &on_return;
  s.force_int3 = m.int3;
  s.allow_int3 = m.int3;
  auto h = e->attach(s);
  ASSERT_TRUE(h.ok()) << h.error().message();

  for (unsigned salt = 1; salt <= 3; salt++) {
    SCOPED_TRACE("salt " + std::to_string(salt));
    fill_patterns(salt);
    caller();
    ASSERT_EQ(g_seen.entries, static_cast<int>(salt));
    ASSERT_EQ(g_seen.returns, static_cast<int>(salt));
    // At the entry: everything but r11 (the one register no ABI rule keeps live at a
    // call) must be as the caller left it, and the handler saw exactly that.
    for (int i = 0; i < 15; i++) {
      if (i == R11) continue;
      EXPECT_EQ(hp_cl_gpr_out[i], hp_cl_gpr_in[i]) << kGprName[i] << " changed by the entry probe";
    }
    for (int i = 0; i < 15; i++)
      EXPECT_EQ(regs_field(g_seen.entry, i), hp_cl_gpr_in[i]) << "entry Regs." << kGprName[i];
    const int arg_regs[6] = {RDI, RSI, RDX, RCX, R8, R9};
    for (unsigned a = 0; a < 6; a++)
      EXPECT_EQ(g_seen.entry.arg(a), hp_cl_gpr_in[arg_regs[a]]) << "arg" << a;
    EXPECT_EQ(hp_cl_flags_out & kDF, 0u) << "DF set at the function's first instruction";
    EXPECT_EQ(hp_cl_rsp_inside, hp_cl_rsp_before - 8);
    EXPECT_EQ(g_seen.entry.rsp, hp_cl_rsp_before - 8);
    EXPECT_EQ(g_seen.entry.rip, addr(target));
    // Vector arguments (xmm0-7, and ymm0-7 for __m256 arguments).
    for (int r = 0; r < 8; r++) {
      expect_vec(hp_cl_vec_out, r, 0, 16, "entry: vector argument");
      if (m.avx) expect_vec(hp_cl_vec_out, r, 16, 32, "entry: vector argument upper half");
    }
    // After the return: the callee-saved registers, rax:rdx and xmm0:xmm1.
    for (int i : {RBX, RBP, R12, R13, R14, R15})
      EXPECT_EQ(hp_cl_gpr_post[i], hp_cl_gpr_in[i]) << kGprName[i] << " after the return";
    EXPECT_EQ(hp_cl_gpr_post[RAX], hp_cl_ret_in[0]) << "rax after the return";
    EXPECT_EQ(hp_cl_gpr_post[RDX], hp_cl_ret_in[1]) << "rdx after the return";
    EXPECT_EQ(g_seen.ret.ret(), hp_cl_ret_in[0]) << "return handler's ret()";
    EXPECT_EQ(g_seen.ret.rdx, hp_cl_ret_in[1]);
    EXPECT_EQ(g_seen.data_at_return, hp_cl_gpr_in[RDI] ^ 0x5555) << "Hit::data entry -> return";
    EXPECT_EQ(std::memcmp(hp_cl_vec_post[0], hp_cl_ret_vec_in[0], 16), 0)
        << "xmm0 after the return: " << vec_hex(hp_cl_vec_post[0], 16);
    EXPECT_EQ(std::memcmp(hp_cl_vec_post[1], hp_cl_ret_vec_in[1], 16), 0)
        << "xmm1 after the return: " << vec_hex(hp_cl_vec_post[1], 16);
    EXPECT_EQ(hp_cl_rsp_after, hp_cl_rsp_before);
    // The return handler's Regs.rsp is the caller's rsp after the ret.
    EXPECT_EQ(g_seen.ret.rsp, hp_cl_rsp_before);
  }
  ASSERT_TRUE(e->detach(*h).ok());
}

std::vector<Mode> entry_modes() {
  std::vector<Mode> v;
  for (bool int3 : {false, true})
    for (bool avx : {false, true})
      v.push_back({int3, avx, 0});
  return v;
}
INSTANTIATE_TEST_SUITE_P(Modes, EntryAndReturn, ::testing::ValuesIn(entry_modes()), mode_name);

class SixArguments : public ::testing::TestWithParam<bool> {};

struct SixSeen {
  long args[6];
  long ret;
  int entries, returns;
};
SixSeen g_six;

TEST_P(SixArguments, HandlersSeeExactArgumentsAndReturnValue) {
  auto e = Engine::create().value();
  g_six = {};
  ProbeSpec s;
  s.target = ":hp_cl_six";
  s.force_int3 = GetParam();
  s.on_entry = [](Hit& h) {
    for (unsigned i = 0; i < 6; i++)
      g_six.args[i] = static_cast<long>(h.regs->arg(i));
    g_six.entries++;
    clobber_everything();
  };
  s.on_return = [](Hit& h) {
    g_six.ret = static_cast<long>(h.regs->ret());
    g_six.returns++;
    clobber_everything();
  };
  auto h = e->attach(s);
  ASSERT_TRUE(h.ok()) << h.error().message();
  const long vals[][6] = {{1, 2, 3, 4, 5, 6},
                          {-1, -2, -3, -4, -5, -6},
                          {0x7fffffffffffffffL, -0x7fffffffffffffffL - 1, 0, 42, -42, 1L << 40},
                          {0x1234567890abcdefL, 0x0fedcba987654321L, 11, 13, 17, 19}};
  for (const auto& v : vals) {
    const long want = static_cast<long>(
        static_cast<unsigned long>(v[0]) * 3 + static_cast<unsigned long>(v[1]) * 5 -
        static_cast<unsigned long>(v[2]) * 7 + static_cast<unsigned long>(v[3] ^ v[4]) -
        static_cast<unsigned long>(v[5]));
    const int n = g_six.entries;
    const long got = hp_cl_six(v[0], v[1], v[2], v[3], v[4], v[5]);
    EXPECT_EQ(got, want);
    ASSERT_EQ(g_six.entries, n + 1);
    ASSERT_EQ(g_six.returns, n + 1);
    for (int i = 0; i < 6; i++)
      EXPECT_EQ(g_six.args[i], v[i]) << "arg" << i;
    EXPECT_EQ(g_six.ret, want);
  }
  ASSERT_TRUE(e->detach(*h).ok());
}

INSTANTIATE_TEST_SUITE_P(JmpAndInt3, SixArguments, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "int3" : "jmp"; });

// vector_registers = false: the handlers promise not to touch the vector registers, so
// the trampolines (entry and return) skip saving them. The engine's own code between the
// trampoline and the handler (dispatcher, read-side sections) must then not touch them
// either: with a handler built for general registers only, every xmm byte survives.
int g_gpr_only_hits = 0;  // handlers run on the test thread
__attribute__((target("general-regs-only"), noinline)) void gpr_only_handler(Hit&) {
  g_gpr_only_hits = g_gpr_only_hits + 1;
  asm volatile(
      "movq $-1, %%rax\n\tmovq $-1, %%rcx\n\tmovq $-1, %%rdx\n\tmovq $-1, %%rsi\n\t"
      "movq $-1, %%rdi\n\tmovq $-1, %%r8\n\tmovq $-1, %%r9\n\tmovq $-1, %%r10\n\t"
      "movq $-1, %%r11\n\txorl %%eax, %%eax"
      :
      :
      : "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "cc", "memory");
}

class NoVectorSaves : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
#if defined(HOTPROBE_TSAN)
    // ThreadSanitizer instruments the dispatcher with calls into its runtime, which uses
    // vector registers: the no-vector-save contract cannot hold in that build.
    GTEST_SKIP() << "the TSan runtime called from the instrumented dispatcher uses xmm registers";
#endif
  }
};

TEST_P(NoVectorSaves, GeneralRegistersOnlyHandlerKeepsEverything) {
  const bool int3 = GetParam();
  auto e = Engine::create().value();
  g_gpr_only_hits = 0;
  // Mid-function.
  ProbeSpec s;
  s.target = ":hp_cl_mid+" + std::to_string(addr(hp_cl_mid_probe) - addr(hp_cl_mid));
  s.on_entry = &gpr_only_handler;
  s.force_int3 = int3;
  s.allow_int3 = int3;
  s.vector_registers = false;
  auto h = e->attach(s);
  ASSERT_TRUE(h.ok()) << h.error().message();
  fill_patterns(5);
  hp_cl_flags_in = 0x2 | 0x1 | 0x80 | 0x800;
  hp_cl_mid();
  ASSERT_EQ(g_gpr_only_hits, 1);
  for (int i = 0; i < 15; i++)
    EXPECT_EQ(hp_cl_gpr_out[i], hp_cl_gpr_in[i]) << kGprName[i] << " changed across the probe";
  EXPECT_EQ(hp_cl_flags_out & kFlagMask, hp_cl_flags_in & kFlagMask);
  for (int r = 0; r < 16; r++)
    expect_vec(hp_cl_vec_out, r, 0, 16, "mid-function, no vector saves");
  ASSERT_TRUE(e->detach(*h).ok());

  // Entry and return.
  ProbeSpec t;
  t.target = ":hp_cl_target";
  t.on_entry = &gpr_only_handler;
  t.on_return = &gpr_only_handler;
  t.force_int3 = int3;
  t.allow_int3 = int3;
  t.vector_registers = false;
  auto ht = e->attach(t);
  ASSERT_TRUE(ht.ok()) << ht.error().message();
  fill_patterns(6);
  hp_cl_caller();
  ASSERT_EQ(g_gpr_only_hits, 3);
  for (int r = 0; r < 8; r++)
    expect_vec(hp_cl_vec_out, r, 0, 16, "entry, no vector saves: vector argument");
  EXPECT_EQ(std::memcmp(hp_cl_vec_post[0], hp_cl_ret_vec_in[0], 16), 0)
      << "xmm0 after the return: " << vec_hex(hp_cl_vec_post[0], 16);
  EXPECT_EQ(std::memcmp(hp_cl_vec_post[1], hp_cl_ret_vec_in[1], 16), 0)
      << "xmm1 after the return: " << vec_hex(hp_cl_vec_post[1], 16);
  EXPECT_EQ(hp_cl_gpr_post[RAX], hp_cl_ret_in[0]);
  EXPECT_EQ(hp_cl_gpr_post[RDX], hp_cl_ret_in[1]);
  for (int i : {RBX, RBP, R12, R13, R14, R15})
    EXPECT_EQ(hp_cl_gpr_post[i], hp_cl_gpr_in[i]) << kGprName[i] << " after the return";
  ASSERT_TRUE(e->detach(*ht).ok());
}

// vector_registers = true (the default) with a handler that writes no vector register:
// the engine's walk of the handler (arch/x86_64/clobber.h) finds that, and the dispatcher
// skips the saves. A second consumer on the same hot site whose handler does write them
// turns the saves on for the site, and off again when it leaves. Every xmm byte of the
// program survives throughout, and both handlers run.
TEST_P(NoVectorSaves, DefaultSettingFollowsTheHandlersOfAHotSite) {
  const bool int3 = GetParam();
  auto e = Engine::create().value();
  g_gpr_only_hits = 0;
  g_seen = Seen{};
  ProbeSpec quiet;
  quiet.target = ":hp_cl_mid+" + std::to_string(addr(hp_cl_mid_probe) - addr(hp_cl_mid));
  quiet.on_entry = &gpr_only_handler;
  quiet.force_int3 = int3;
  quiet.allow_int3 = int3;
  ASSERT_TRUE(quiet.vector_registers) << "this test is about the default";
  auto hq = e->attach(quiet);
  ASSERT_TRUE(hq.ok()) << hq.error().message();
  auto check = [&](int salt, const char* what) {
    fill_patterns(salt);
    hp_cl_flags_in = 0x2 | 0x1 | 0x80 | 0x800;
    hp_cl_mid();
    for (int i = 0; i < 15; i++)
      EXPECT_EQ(hp_cl_gpr_out[i], hp_cl_gpr_in[i]) << what << ": " << kGprName[i] << " changed";
    for (int r = 0; r < 16; r++)
      expect_vec(hp_cl_vec_out, r, 0, 16, what);
  };
  check(7, "one general-register handler");
  EXPECT_EQ(g_gpr_only_hits, 1);

  ProbeSpec loud = quiet;
  loud.on_entry = &on_entry;  // clobber_everything(): writes every xmm register
  auto hl = e->attach(loud);
  ASSERT_TRUE(hl.ok()) << hl.error().message();
  check(8, "with a vector-writing handler on the same site");
  EXPECT_EQ(g_gpr_only_hits, 2);
  EXPECT_EQ(g_seen.entries, 1);

  ASSERT_TRUE(e->detach(*hl).ok());
  check(9, "after the vector-writing handler left");
  EXPECT_EQ(g_gpr_only_hits, 3);
  EXPECT_EQ(g_seen.entries, 1);
  ASSERT_TRUE(e->detach(*hq).ok());
}

INSTANTIATE_TEST_SUITE_P(JmpAndInt3, NoVectorSaves, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "int3" : "jmp"; });

// Documents what happens to ymm upper halves when a handler zeroes them (vzeroupper):
// int3 mode keeps them (the kernel saves the whole xstate around the signal) and the
// test requires it; jmp mode saves xmm0-15 only, so they are lost there — recorded as a
// property and printed, not failed, because ProbeSpec::vector_registers promises xmm only.
class HandlerThatZeroesUpperHalves : public ::testing::TestWithParam<bool> {};

TEST_P(HandlerThatZeroesUpperHalves, AtAMidFunctionProbe) {
  if (!have_avx()) GTEST_SKIP() << "this CPU has no AVX";
  const bool int3 = GetParam();
  const std::uint64_t off = addr(hp_cl_mid_avx_probe) - addr(hp_cl_mid_avx);
  auto e = Engine::create().value();
  g_seen = Seen{};
  g_seen.zero_upper = true;
  ProbeSpec s;
  s.target = ":hp_cl_mid_avx+" + std::to_string(off);
  s.on_entry = &on_entry;
  s.force_int3 = int3;
  auto h = e->attach(s);
  ASSERT_TRUE(h.ok()) << h.error().message();
  fill_patterns(9);
  hp_cl_flags_in = 0x2 | 0x1 | 0x800;
  hp_cl_mid_avx();
  ASSERT_TRUE(e->detach(*h).ok());
  ASSERT_EQ(g_seen.entries, 1);
  int lost = 0;
  for (int r = 0; r < 16; r++) {
    expect_vec(hp_cl_vec_out, r, 0, 16, "low half");
    lost += std::memcmp(&hp_cl_vec_out[r][16], &hp_cl_vec_in[r][16], 16) != 0;
  }
  RecordProperty("ymm_upper_halves_lost", lost);
  if (int3) {
    EXPECT_EQ(lost, 0) << "int3 mode: the kernel restores the whole xstate";
  } else if (lost) {
    std::printf(
        "note: jmp mode: %d of 16 ymm upper halves lost to a handler running vzeroupper "
        "(the trampoline saves xmm0-15 only)\n",
        lost);
  }
}

INSTANTIATE_TEST_SUITE_P(JmpAndInt3, HandlerThatZeroesUpperHalves, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "int3" : "jmp"; });

}  // namespace
