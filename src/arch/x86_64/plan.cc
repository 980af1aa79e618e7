#include "arch/x86_64/plan.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <string>

namespace hp::arch {
namespace {

std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
  return buf;
}

std::string quoted(const Insn& insn) {
  return "`" + text_of(insn) + "`";
}

struct Sweep {
  std::vector<Insn> insns;
  std::uint64_t stop = 0;  // offset where decoding stopped (== size when complete)
  Error error;             // why it stopped early
};

// Linear sweep over the whole symbol. Stops at the first undecodable byte.
Sweep sweep(std::span<const std::uint8_t> fn, std::uint64_t base) {
  Sweep s;
  // About one instruction per 4 bytes, at most one per 3 in short functions (push rbp; mov
  // rbp, rsp; ...; pop rbp; ret): one allocation for most functions, not one per doubling.
  s.insns.reserve(std::min<std::size_t>(fn.size() / 3 + 2, 256));
  std::uint64_t off = 0;
  while (off < fn.size()) {
    // The common instructions are decoded in place; decode_shape() for the others.
    Insn& insn = s.insns.emplace_back();
    if (!detail::quick_shape(fn.subspan(off), base + off, insn)) {
      auto r = decode_shape(fn.subspan(off), base + off);
      if (!r.ok()) {
        s.insns.pop_back();
        s.error = r.error();
        break;
      }
      insn = std::move(r.value());
    }
    off += insn.length;
  }
  s.stop = off;
  return s;
}

std::size_t index_at(const Sweep& s, std::uint64_t base, std::uint64_t offset) {
  for (std::size_t i = 0; i < s.insns.size(); ++i) {
    if (s.insns[i].address == base + offset) return i;
    if (s.insns[i].address > base + offset) break;
  }
  return s.insns.size();
}

Result<std::size_t> find_boundary(const Sweep& s, std::span<const std::uint8_t> fn,
                                  std::uint64_t base, std::uint64_t offset) {
  if (offset >= fn.size()) {
    return Error(Errc::invalid_argument, "offset +" + hex(offset) + " is past the end of the " +
                                             std::to_string(fn.size()) + "-byte function");
  }
  const std::size_t i = index_at(s, base, offset);
  if (i < s.insns.size()) return i;
  if (offset >= s.stop) {
    return Error(Errc::not_on_boundary, "cannot tell whether +" + hex(offset) +
                                            " is an instruction boundary: " + s.error.message());
  }
  for (const Insn& insn : s.insns) {
    if (insn.address < base + offset && insn.end() > base + offset) {
      return Error(Errc::not_on_boundary, "+" + hex(offset) + " is inside " + quoted(insn) +
                                              " at +" + hex(insn.address - base));
    }
  }
  return Error(Errc::not_on_boundary, "+" + hex(offset) + " is not an instruction boundary");
}

}  // namespace

Result<void> check_boundary(std::span<const std::uint8_t> function, std::uint64_t function_address,
                            std::uint64_t offset) {
  const Sweep s = sweep(function, function_address);
  auto r = find_boundary(s, function, function_address, offset);
  if (!r.ok()) return r.error();
  return {};
}

namespace {

// What both displacement plans start with: the sweep, the probed instruction's index
// (after the landing pad for a probe at +0), and the plan's probe address and entry flags.
Result<std::size_t> start_plan(Sweep& s, DisplacementPlan& plan,
                               std::span<const std::uint8_t> function,
                               std::uint64_t function_address, std::uint64_t offset) {
  s = sweep(function, function_address);
  auto found = find_boundary(s, function, function_address, offset);
  if (!found.ok()) return found.error();
  std::size_t first = found.value();
  plan.probe_address = function_address + offset;
  const bool starts_with_endbr = !s.insns.empty() && s.insns[0].kind == InsnKind::endbr64;
  if (offset == 0 && starts_with_endbr) ++first;  // probe after the landing pad
  plan.at_entry = offset == 0 || (offset == 4 && starts_with_endbr);
  plan.flags_live = !plan.at_entry;
  if (first >= s.insns.size()) {
    return Error(Errc::not_relocatable, "too short: nothing after `endbr64` to displace");
  }
  return first;
}

}  // namespace

Result<DisplacementPlan> plan_displacement(std::span<const std::uint8_t> function,
                                           std::uint64_t function_address, std::uint64_t offset) {
  Sweep s;
  DisplacementPlan plan;
  auto started = start_plan(s, plan, function, function_address, offset);
  if (!started.ok()) return started.error();
  std::size_t first = started.value();
  plan.patch_address = s.insns[first].address;
  plan.patch_offset = static_cast<std::uint32_t>(plan.patch_address - function_address);

  // Whole instructions until at least 5 bytes.
  std::size_t last = first;
  for (;; ++last) {
    if (last >= s.insns.size()) {
      if (s.stop < function.size()) {
        return Error(Errc::not_relocatable,
                     "cannot decode the displaced bytes: " + s.error.message());
      }
      return Error(Errc::not_relocatable, "too short: only " +
                                              std::to_string(function.size() - plan.patch_offset) +
                                              " bytes from +" + hex(plan.patch_offset) +
                                              " to the end of the function, a jmp rel32 needs 5");
    }
    const Insn& insn = s.insns[last];
    const std::uint64_t len = insn.end() - plan.patch_address;
    const bool completes = len >= kJmpRel32Length;
    // Formatted only for a refusal: formatting costs more than decoding.
    auto where = [&] { return quoted(insn) + " at +" + hex(insn.address - function_address); };
    switch (insn.kind) {
      case InsnKind::int3:
        return Error(Errc::not_relocatable,
                     where() + " lies in the displaced bytes (a breakpoint someone else placed?)");
      case InsnKind::xbegin:
      case InsnKind::far_transfer:
        return Error(Errc::not_relocatable, where() + " cannot be relocated");
      case InsnKind::call_rel:
      case InsnKind::call_indirect:
        if (!completes) {
          return Error(Errc::not_relocatable,
                       "the displaced bytes would run past " + where() +
                           ": its return address would land inside the patched jump");
        }
        break;
      default:
        if (insn.ends_flow() && !completes) {
          return Error(Errc::not_relocatable, "too short: " + where() + " ends the flow after " +
                                                  std::to_string(len) +
                                                  " bytes, a jmp rel32 needs 5");
        }
        break;
    }
    if (completes) break;
  }
  plan.length = static_cast<std::uint32_t>(s.insns[last].end() - plan.patch_address);

  // Every branch of the function that lands strictly inside the displaced bytes.
  if (s.stop < function.size()) {
    return Error(Errc::not_relocatable,
                 "cannot scan the whole function for branches into the displaced bytes: " +
                     s.error.message());
  }
  const std::uint64_t lo = plan.patch_address, hi = plan.patch_address + plan.length;
  for (const Insn& insn : s.insns) {
    if (insn.rip_relative && insn.target > lo && insn.target < hi) {
      // `lea rax, [rip+X]; jmp rax` style computed jumps: an address of a byte inside the
      // displaced range is as bad as a branch to it.
      return Error(Errc::not_relocatable,
                   quoted(insn) + " at +" + hex(insn.address - function_address) +
                       " takes the address +" + hex(insn.target - function_address) +
                       ", inside the displaced bytes [+" + hex(plan.patch_offset) + ", +" +
                       hex(plan.patch_offset + plan.length) + ")");
    }
    if (!insn.is_relative_branch()) continue;
    if (insn.target > lo && insn.target < hi) {
      return Error(Errc::not_relocatable,
                   quoted(insn) + " at +" + hex(insn.address - function_address) +
                       " branches to +" + hex(insn.target - function_address) +
                       ", inside the displaced bytes [+" + hex(plan.patch_offset) + ", +" +
                       hex(plan.patch_offset + plan.length) + ")");
    }
  }
  // The sweep's own vector, cut down to the displaced instructions (no second allocation).
  s.insns.erase(s.insns.begin() + static_cast<std::ptrdiff_t>(last) + 1, s.insns.end());
  s.insns.erase(s.insns.begin(), s.insns.begin() + static_cast<std::ptrdiff_t>(first));
  plan.insns = std::move(s.insns);
  remember_shapes(plan.insns);  // the relocator decodes them next
  const auto from = function.begin() + plan.patch_offset;
  plan.original.assign(from, from + plan.length);
  return plan;
}

Result<DisplacementPlan> plan_short_displacement(std::span<const std::uint8_t> function,
                                                 std::uint64_t function_address,
                                                 std::uint64_t offset) {
  Sweep s;
  DisplacementPlan plan;
  auto started = start_plan(s, plan, function, function_address, offset);
  if (!started.ok()) return started.error();
  const std::size_t first = started.value();
  const Insn& insn = s.insns[first];
  auto where = [&] { return quoted(insn) + " at +" + hex(insn.address - function_address); };
  if (insn.length < 2) {
    return Error(Errc::not_relocatable,
                 where() + " is 1 byte long: a 2-byte jump would cover the next instruction too");
  }
  switch (insn.kind) {
    case InsnKind::int3:
      return Error(Errc::not_relocatable, where() + " is a breakpoint someone else placed");
    case InsnKind::xbegin:
    case InsnKind::far_transfer:
      return Error(Errc::not_relocatable, where() + " cannot be relocated");
    default:
      break;
  }
  plan.patch_address = insn.address;
  plan.patch_offset = static_cast<std::uint32_t>(plan.patch_address - function_address);
  plan.length = insn.length;
  s.insns.erase(s.insns.begin() + static_cast<std::ptrdiff_t>(first) + 1, s.insns.end());
  s.insns.erase(s.insns.begin(), s.insns.begin() + static_cast<std::ptrdiff_t>(first));
  plan.insns = std::move(s.insns);
  remember_shapes(plan.insns);
  const auto from = function.begin() + plan.patch_offset;
  plan.original.assign(from, from + plan.length);
  return plan;
}

Result<Int3Plan> plan_int3(std::span<const std::uint8_t> function, std::uint64_t function_address,
                           std::uint64_t offset) {
  const Sweep s = sweep(function, function_address);
  auto found = find_boundary(s, function, function_address, offset);
  if (!found.ok()) return found.error();
  Int3Plan plan;
  plan.insn = s.insns[found.value()];
  plan.probe_address = function_address + offset;
  const bool starts_with_endbr = !s.insns.empty() && s.insns[0].kind == InsnKind::endbr64;
  plan.flags_live = !(offset == 0 || (offset == 4 && starts_with_endbr));
  auto where = [&] { return quoted(plan.insn) + " at +" + hex(offset); };
  switch (plan.insn.kind) {
    case InsnKind::int3:
      if (offset == 0) {
        // A function does not start with int3 in its file: someone else's breakpoint.
        return Error(Errc::not_relocatable,
                     where() +
                         " cannot be copied out of line: the function already holds a "
                         "breakpoint (a kernel uprobe, e.g. bpftrace or perf, or a "
                         "debugger); detach that tracer first");
      }
      return Error(Errc::not_relocatable, where() + " cannot be copied out of line");
    case InsnKind::xbegin:
    case InsnKind::far_transfer:
      return Error(Errc::not_relocatable, where() + " cannot be copied out of line");
    default:
      break;
  }
  const auto from = function.begin() + static_cast<std::ptrdiff_t>(offset);
  plan.original.assign(from, from + plan.insn.length);
  return plan;
}

}  // namespace hp::arch
