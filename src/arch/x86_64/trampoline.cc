#include "arch/x86_64/trampoline.h"

#include <algorithm>
#include <cinttypes>
#include <cstddef>
#include <cstdio>
#include <string>

#include "hotprobe/regs.h"

namespace hp::arch {
namespace {

using hotprobe::Regs;

constexpr std::int32_t kRedZone = 128;
constexpr std::int32_t kFrame = static_cast<std::int32_t>(sizeof(Regs));
constexpr std::int32_t kVectorArea = 16 * 16;
// [M] flags, [M+8] rax, M = S - kRedZone - 16.
constexpr std::int32_t kHead = kRedZone + 16;

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

// Offset of the way-back pointer M from the frame (rsp after the frame is built).
std::int32_t way_back_offset(bool save_vector) {
  return kFrame + vector_area(save_vector);
}

// Saves everything into a Regs frame at rsp and calls dispatcher(context, frame).
void emit_save_and_call(Emitter& e, bool flags_live, bool save_vector, std::uint64_t rip_value,
                        std::uint64_t context, std::uint64_t dispatcher) {
  e.lea_rsp(-kRedZone);
  e.push(rax);
  if (flags_live) {
    e.pushfq();
    e.cld();
  } else {
    e.push_imm8(0);
  }
  e.mov_rr(rax, rsp);
  e.and_rsp_imm8(-16);
  e.push(rax);
  e.push(rax);
  if (save_vector) {
    e.lea_rsp(-kVectorArea);
    for (unsigned i = 0; i < 16; ++i)
      e.movups_store(static_cast<std::int32_t>(16 * i), i);
  }
  e.lea_rsp(-kFrame);
  for (const SavedGpr& s : kSaved)
    e.mov_to_rsp_mem(s.offset, s.reg);
  e.mov_from_mem(rcx, rax, 8);
  e.mov_to_rsp_mem(offsetof(Regs, rax), rcx);
  e.mov_from_mem(rcx, rax, 0);
  e.mov_to_rsp_mem(offsetof(Regs, rflags), rcx);
  e.lea(rcx, rax, kHead);
  e.mov_to_rsp_mem(offsetof(Regs, rsp), rcx);
  e.movabs(rcx, rip_value);
  e.mov_to_rsp_mem(offsetof(Regs, rip), rcx);
  e.movabs(rdi, context);
  e.mov_rr(rsi, rsp);
  if (in_rel32_reach(e.here() + 5, dispatcher)) {
    e.call_rel32(dispatcher);
  } else {
    e.movabs(rax, dispatcher);
    e.call_reg(rax);
  }
}

// Restores every general register (from the frame) and xmm0-15; leaves rsp = M.
void emit_restore(Emitter& e, bool save_vector) {
  if (save_vector) {
    for (unsigned i = 0; i < 16; ++i)
      e.movups_load(i, kFrame + static_cast<std::int32_t>(16 * i));
  }
  for (const SavedGpr& s : kSaved)
    e.mov_from_rsp_mem(s.reg, s.offset);
  e.mov_from_rsp_mem(rax, offsetof(Regs, rax));
  e.mov_from_rsp_mem(rsp, way_back_offset(save_vector));
}

std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
  return buf;
}

}  // namespace

Result<Trampoline> make_entry_trampoline(const EntryTrampolineSpec& spec,
                                         const DisplacementPlan& plan) {
  Emitter e(spec.address);
  emit_save_and_call(e, plan.flags_live, spec.save_vector, plan.probe_address, spec.context,
                     spec.dispatcher);
  emit_restore(e, spec.save_vector);
  if (plan.flags_live) {
    e.popfq();
    e.lea_rsp(kHead - 8);
  } else {
    e.lea_rsp(kHead);
  }
  Trampoline t;
  t.relocated_offset = e.size();
  HP_TRY(relocate_into(e, plan.original, plan.patch_address, t.map));
  e.jmp_to(plan.patch_address + plan.length);
  t.code = std::move(e).take();
  return t;
}

Result<std::vector<std::uint8_t>> make_return_trampoline(const ReturnTrampolineSpec& spec) {
  Emitter e(spec.address);
  emit_save_and_call(e, /*flags_live=*/false, spec.save_vector, spec.address, spec.context,
                     spec.dispatcher);
  // rax = the original return address: park it at [S-8], below the caller's rsp but in the
  // red zone, so the final jmp needs no register.
  e.mov_from_rsp_mem(rcx, way_back_offset(spec.save_vector));
  e.mov_to_mem(rcx, kHead - 8, rax);
  emit_restore(e, spec.save_vector);
  e.lea_rsp(kHead);
  e.jmp_rsp_mem(-8);
  return std::move(e).take();
}

Result<Relocation> make_int3_copy(const Int3Plan& plan, std::uint64_t address) {
  return relocate_with_jmp_back(plan.original, plan.probe_address, address);
}

Result<std::vector<std::uint8_t>> make_jmp_patch_bytes(std::uint64_t patch_address,
                                                       std::uint32_t length,
                                                       std::uint64_t trampoline) {
  if (length < kJmpRel32Length) {
    return Error(Errc::invalid_argument,
                 "a jmp rel32 needs 5 bytes, the plan has " + std::to_string(length));
  }
  if (!in_rel32_reach(patch_address + kJmpRel32Length, trampoline)) {
    return Error(Errc::no_memory_in_reach, "trampoline " + hex(trampoline) +
                                               " is out of rel32 reach of the site " +
                                               hex(patch_address));
  }
  Emitter e(patch_address);
  e.jmp_rel32(trampoline);
  while (e.size() < length)
    e.int3();
  return std::move(e).take();
}

Result<PatchPlan> make_jmp_patch_plan(const DisplacementPlan& plan, std::uint64_t trampoline) {
  auto bytes = make_jmp_patch_bytes(plan.patch_address, plan.length, trampoline);
  if (!bytes.ok()) return bytes.error();
  const std::vector<std::uint8_t>& b = bytes.value();
  PatchPlan p;
  p.steps.push_back({{{plan.patch_address, {0xcc}}}});
  p.steps.push_back({{{plan.patch_address + 1, {b.begin() + 1, b.end()}}}});
  p.steps.push_back({{{plan.patch_address, {b[0]}}}});
  return p;
}

PatchPlan make_jmp_unpatch_plan(const DisplacementPlan& plan) {
  const std::vector<std::uint8_t>& o = plan.original;
  PatchPlan p;
  p.steps.push_back({{{plan.patch_address, {0xcc}}}});
  p.steps.push_back({{{plan.patch_address + 1, {o.begin() + 1, o.end()}}}});
  p.steps.push_back({{{plan.patch_address, {o[0]}}}});
  return p;
}

PatchPlan make_int3_patch_plan(const Int3Plan& plan) {
  PatchPlan p;
  p.steps.push_back({{{plan.probe_address, {0xcc}}}});
  return p;
}

PatchPlan make_int3_unpatch_plan(const Int3Plan& plan) {
  PatchPlan p;
  p.steps.push_back({{{plan.probe_address, {plan.original[0]}}}});
  return p;
}

PatchPlan merge_patch_plans(std::span<const PatchPlan> plans) {
  PatchPlan out;
  for (const PatchPlan& plan : plans) {
    if (out.steps.size() < plan.steps.size()) out.steps.resize(plan.steps.size());
    for (std::size_t i = 0; i < plan.steps.size(); ++i) {
      const auto& w = plan.steps[i].writes;
      out.steps[i].writes.insert(out.steps[i].writes.end(), w.begin(), w.end());
    }
  }
  for (PatchStep& step : out.steps) {
    std::sort(step.writes.begin(), step.writes.end(),
              [](const PatchWrite& a, const PatchWrite& b) { return a.address < b.address; });
  }
  return out;
}

}  // namespace hp::arch
