#include "arch/x86_64/frame.h"

#include <cinttypes>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <string>

#include "arch/x86_64/handler_stack.h"
#include "base/assert.h"
#include "hotprobe/regs.h"

namespace hp::arch {

using hotprobe::Regs;

namespace {

constexpr std::int32_t kFrame = static_cast<std::int32_t>(sizeof(Regs));
constexpr std::int32_t kVectorArea = 16 * 16;

struct SavedGpr {
  Gpr reg;
  std::int32_t offset;
};
// Every register but rax, which is the way-back pointer while the frame is built.
constexpr SavedGpr kSaved[] = {
    {rcx, offsetof(Regs, rcx)}, {rdx, offsetof(Regs, rdx)}, {rsi, offsetof(Regs, rsi)},
    {rdi, offsetof(Regs, rdi)}, {r8, offsetof(Regs, r8)},   {r9, offsetof(Regs, r9)},
    {r10, offsetof(Regs, r10)}, {r11, offsetof(Regs, r11)}, {rbx, offsetof(Regs, rbx)},
    {rbp, offsetof(Regs, rbp)}, {r12, offsetof(Regs, r12)}, {r13, offsetof(Regs, r13)},
    {r14, offsetof(Regs, r14)}, {r15, offsetof(Regs, r15)},
};

std::int32_t vector_area(bool save_vector) {
  return save_vector ? kVectorArea : 0;
}

// Regs from rax to r15, in memory order: what emit_restore() pops.
constexpr Gpr kPopped[] = {rax, rcx, rdx, rsi, rdi, r8, r9, r10, r11, rbx, rbp, r12, r13, r14, r15};
static_assert(offsetof(Regs, rax) == 0 && offsetof(Regs, r15) == 14 * 8 &&
              offsetof(Regs, rbx) == 9 * 8 && offsetof(Regs, r11) == 8 * 8);

std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
  return buf;
}

}  // namespace

std::int32_t way_back_offset(bool save_vector) {
  return kFrame + vector_area(save_vector);
}

void emit_save(Emitter& e, bool flags_live, bool save_vector, std::uint64_t rip_value) {
  if (flags_live) {
    e.lea_rsp(-kRedZone);
    e.push(rax);
    e.pushfq();
    e.cld();
  } else {
    e.lea_rsp(-kRedZone - 8);
    e.push(rax);
  }
  e.mov_rr(rax, rsp);
  e.and_rsp_imm8(-16);
  e.lea_rsp(-8);  // padding: 16-byte alignment below
  e.push(rax);
  if (save_vector) {
    e.lea_rsp(-kVectorArea);
    for (unsigned i = 0; i < 16; ++i)
      e.movups_store(static_cast<std::int32_t>(16 * i), i);
  }
  e.lea_rsp(-kFrame);
  for (const SavedGpr& s : kSaved)
    e.mov_to_rsp_mem(s.offset, s.reg);
  e.mov_from_mem(rcx, rax, flags_live ? 8 : 0);
  e.mov_to_rsp_mem(offsetof(Regs, rax), rcx);
  if (flags_live) {
    e.mov_from_mem(rcx, rax, 0);
    e.mov_to_rsp_mem(offsetof(Regs, rflags), rcx);
  }
  e.lea(rcx, rax, kHead);
  e.mov_to_rsp_mem(offsetof(Regs, rsp), rcx);
  e.movabs(rcx, rip_value, kValueRip);
  e.mov_to_rsp_mem(offsetof(Regs, rip), rcx);
}

std::uint32_t emit_switch_in(Emitter& e) {
  const auto tls = static_cast<std::uint32_t>(handler_stack_tls());
  for (std::uint8_t b : {0x64, 0x48, 0x8b, 0x04, 0x25})  // mov rax, fs:[next]
    e.u8(b);
  e.u32(tls);
  for (std::uint8_t b : {0x48, 0x85, 0xc0, 0x0f, 0x84})  // test rax, rax; je rel32
    e.u8(b);
  const std::uint32_t field = e.size();
  e.u32(0);
  for (std::uint8_t b : {0x64, 0x48, 0xc7, 0x04, 0x25})  // mov qword fs:[next], 0
    e.u8(b);
  e.u32(tls);
  e.u32(0);
  e.mov_rr(r15, rsp);
  e.mov_rr(rsp, rax);
  return field;
}

void emit_switch_out(Emitter& e) {
  e.mov_rr(rcx, rsp);
  e.mov_rr(rsp, r15);
  for (std::uint8_t b : {0x64, 0x48, 0x89, 0x0c, 0x25})  // mov fs:[next], rcx
    e.u8(b);
  e.u32(static_cast<std::uint32_t>(handler_stack_tls()));
}

void emit_no_handler_stack(Emitter& e, std::uint32_t je_field, std::uint64_t context,
                           std::uint64_t dispatcher, std::uint32_t landing_exit,
                           std::uint32_t back) {
  e.rel32_at(je_field, e.size());
  e.movabs(rdi, context, kValueContext);
  e.mov_rr(rsi, rsp);
  e.movabs(rdx, dispatcher);
  e.movabs(rax, reinterpret_cast<std::uint64_t>(&hp_handler_stack_call));
  e.call_reg(rax);
  if (landing_exit) {
    for (std::uint8_t b : {0x84, 0xc0, 0x0f, 0x85})  // test al, al; jnz rel32
      e.u8(b);
    e.u32(0);
    e.rel32_at(e.size() - 4, landing_exit);
  }
  e.jmp_rel32_to_offset(back);
}

void emit_call(Emitter& e, std::uint64_t context, std::uint64_t dispatcher, Gpr frame) {
  e.movabs(rdi, context, kValueContext);
  e.mov_rr(rsi, frame);
  e.call_to(dispatcher, kValueDispatcher);
}

void emit_vector_restore(Emitter& e, bool save_vector) {
  if (!save_vector) return;
  for (unsigned i = 0; i < 16; ++i)
    e.movups_load(i, kFrame + static_cast<std::int32_t>(16 * i));
}

// Pops, 23 bytes where movs take 75: a trampoline with a landing exit restores twice in
// its slot.
void emit_restore(Emitter& e, bool save_vector) {
  for (Gpr r : kPopped)
    e.pop(r);
  e.mov_from_rsp_mem(rsp, way_back_offset(save_vector) - 15 * 8);
}

// Without loading rsp from memory: a loaded rsp puts the store-to-load latency in front
// of every later stack access of the thread (the displaced push, the function's ret, the
// caller's next call), measured at 0.3-0.5 ns a hit. Whether the save's `and` moved rsp
// (bit 3 of the way-back pointer M) is instead a branch, which the predictor learns per
// site; `likely_moved` picks the fall-through (at a function's entry rsp is 8 mod 16, so
// the save moved it; after a ret it is 0 mod 16).
void emit_restore_to_site(Emitter& e, bool save_vector, std::int32_t extra, bool likely_moved,
                          std::vector<RareExit>& rare) {
  for (Gpr r : kPopped)
    e.pop(r);
  // M's slot, from rsp after the pops; the padding and M sit below A = M & -16.
  const std::int32_t way = way_back_offset(save_vector) - 15 * 8;
  const std::int32_t unmoved = way + 16 + kHead + extra;  // S + extra - rsp, when M = A
  // test byte [rsp+way], 8
  e.u8(0xf6);
  if (way < 128) {
    e.u8(0x44);
    e.u8(0x24);
    e.u8(static_cast<std::uint8_t>(way));
  } else {
    e.u8(0x84);
    e.u8(0x24);
    e.u32(static_cast<std::uint32_t>(way));
  }
  e.u8(0x08);
  e.u8(0x0f);
  e.u8(likely_moved ? 0x84 : 0x85);  // je / jne rel32: to the unlikely case
  const std::uint32_t field = e.size();
  e.u32(0);
  e.lea_rsp(unmoved + (likely_moved ? 8 : 0));
  rare.push_back({field, unmoved + (likely_moved ? 0 : 8), e.size()});
}

void emit_rare_exits(Emitter& e, const std::vector<RareExit>& rare) {
  for (const RareExit& r : rare) {
    e.rel32_at(r.jcc_field, e.size());
    e.lea_rsp(r.lea);
    e.jmp_rel32_to_offset(r.back);
  }
}

Result<Relocation> make_int3_copy(const Int3Plan& plan, std::uint64_t address) {
  return relocate_with_jmp_back(plan.original, plan.probe_address, address);
}

Result<void> write_jmp_patch_bytes(std::uint64_t patch_address, std::uint32_t length,
                                   std::uint64_t trampoline, std::span<std::uint8_t> out) {
  if (length < kJmpRel32Length) {
    return Error(Errc::invalid_argument,
                 "a jmp rel32 needs 5 bytes, the plan has " + std::to_string(length));
  }
  if (!in_rel32_reach(patch_address + kJmpRel32Length, trampoline)) {
    return Error(Errc::no_memory_in_reach, "trampoline " + hex(trampoline) +
                                               " is out of rel32 reach of the site " +
                                               hex(patch_address));
  }
  HP_CHECK(out.size() >= length);
  // By hand, not through an Emitter (which reserves a trampoline's 768 bytes): one per site.
  std::memset(out.data(), 0xcc, length);
  out[0] = 0xe9;
  const auto rel = static_cast<std::uint32_t>(trampoline - (patch_address + kJmpRel32Length));
  std::memcpy(&out[1], &rel, 4);
  return {};
}

}  // namespace hp::arch
