#include "arch/x86_64/fuzz.h"

#include <algorithm>
#include <set>
#include <vector>

#include "arch/x86_64/decode.h"
#include "arch/x86_64/frame.h"
#include "arch/x86_64/plan.h"
#include "arch/x86_64/relocate.h"
#include "base/assert.h"

namespace hp::arch {
namespace {

constexpr std::uint64_t kOriginal = 0x0000'5555'0000'1000ULL;
constexpr std::uint64_t kNear = kOriginal + 0x4000'0000ULL;  // 1 GiB away
constexpr std::uint64_t kFar = 0x0000'7f00'0000'0000ULL;     // far from everything

bool is_jmp_abs(std::span<const std::uint8_t> code, std::size_t at) {
  return at + 14 <= code.size() && code[at] == 0xff && code[at + 1] == 0x25 && code[at + 2] == 0 &&
         code[at + 3] == 0 && code[at + 4] == 0 && code[at + 5] == 0;
}

std::uint64_t literal_at(std::span<const std::uint8_t> code, std::size_t at) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i)
    v = (v << 8) | code[at + static_cast<std::size_t>(i)];
  return v;
}

// Every target the relocated code may legitimately name: the original branch and
// RIP-relative targets, the end of the original bytes, and the relocated code itself.
void check_relocation(std::span<const std::uint8_t> original, const Relocation& r,
                      std::uint64_t new_address, bool with_jmp_back) {
  std::set<std::uint64_t> allowed;
  for (std::size_t off = 0; off < original.size();) {
    auto insn = decode(original.subspan(off), kOriginal + off);
    HP_CHECK(insn.ok());
    if (insn->is_relative_branch() || insn->rip_relative) allowed.insert(insn->target);
    off += insn->length;
  }
  allowed.insert(kOriginal + original.size());

  HP_CHECK(!r.map.empty());
  HP_CHECK(r.map.front().original == 0 && r.map.front().relocated == 0);
  HP_CHECK(r.map.back().original == original.size());
  std::set<std::uint32_t> starts;
  for (std::size_t off = 0; off < r.code.size();) {
    starts.insert(static_cast<std::uint32_t>(off));
    const std::uint64_t here = new_address + off;
    if (is_jmp_abs(r.code, off)) {
      HP_CHECK(allowed.count(literal_at(r.code, off + 6)) == 1);
      off += 14;
      continue;
    }
    auto insn = decode(std::span(r.code).subspan(off), here);
    HP_CHECK_MSG(insn.ok(), "relocated code does not decode");
    if (insn->is_relative_branch()) {
      const bool inside =
          insn->target >= new_address && insn->target <= new_address + r.code.size();
      HP_CHECK_MSG(inside || allowed.count(insn->target) == 1, "relocated branch to a new target");
    }
    if (insn->rip_relative) {
      HP_CHECK_MSG(allowed.count(insn->target) == 1, "relocated RIP-relative operand moved");
    }
    off += insn->length;
  }
  starts.insert(static_cast<std::uint32_t>(r.code.size()));
  for (std::size_t i = 0; i < r.map.size(); ++i) {
    HP_CHECK_MSG(starts.count(r.map[i].relocated) == 1 || (with_jmp_back && i + 1 == r.map.size()),
                 "map points inside a relocated instruction");
    if (i) HP_CHECK(r.map[i].original > r.map[i - 1].original);
  }
}

void try_relocate(std::span<const std::uint8_t> original, std::uint64_t to, FuzzStats* stats) {
  auto r = relocate_with_jmp_back(original, kOriginal, to);
  if (!r.ok()) {
    HP_CHECK_MSG(r.error().code() == Errc::not_relocatable, r.error().message().c_str());
    HP_CHECK(!r.error().message().empty());
    if (stats) ++stats->refused;
    return;
  }
  check_relocation(original, r.value(), to, true);
  if (stats) ++stats->relocated;
}

}  // namespace

void check_decodes(std::span<const std::uint8_t> code, std::uint64_t address) {
  for (std::size_t off = 0; off < code.size();) {
    if (is_jmp_abs(code, off)) {
      off += 14;
      continue;
    }
    auto insn = decode(code.subspan(off), address + off);
    HP_CHECK_MSG(insn.ok(), "generated code does not decode");
    off += insn->length;
  }
}

void fuzz_one(std::span<const std::uint8_t> data, FuzzStats* stats) {
  if (data.empty()) return;
  auto first = decode(data, kOriginal);
  if (first.ok()) {
    HP_CHECK(first->length >= 1 && first->length <= kMaxInsnLength && first->length <= data.size());
    HP_CHECK(!first->text.empty());
    // Decoding only the instruction's own bytes gives the same instruction.
    auto again = decode(data.first(first->length), kOriginal);
    HP_CHECK(again.ok() && again->length == first->length && again->text == first->text);
    if (stats) ++stats->decoded;
    try_relocate(data.first(first->length), kNear, stats);
    try_relocate(data.first(first->length), kFar, stats);
  }

  auto plan = plan_displacement(data, kOriginal, 0);
  if (plan.ok()) {
    if (stats) ++stats->planned;
    HP_CHECK(plan->length >= kJmpRel32Length && plan->original.size() == plan->length);
    HP_CHECK(plan->patch_offset + plan->length <= data.size());
    HP_CHECK(std::equal(plan->original.begin(), plan->original.end(),
                        data.begin() + plan->patch_offset));
    try_relocate(plan->original, kNear, stats);
    try_relocate(plan->original, kFar, stats);
    std::vector<std::uint8_t> patch(plan->length);
    HP_CHECK(write_jmp_patch_bytes(plan->patch_address, plan->length, kNear, patch).ok());
  } else {
    const Errc c = plan.error().code();
    HP_CHECK(c == Errc::not_relocatable || c == Errc::not_on_boundary);
  }

  // int3 mode at a few boundaries found by the sweep.
  for (std::uint64_t off = 0; off < data.size() && off < 64;) {
    auto insn = decode(data.subspan(off), kOriginal + off);
    if (!insn.ok()) break;
    auto p = plan_int3(data, kOriginal, off);
    HP_CHECK(p.ok() || p.error().code() == Errc::not_relocatable);
    if (p.ok()) {
      auto copy = make_int3_copy(p.value(), kNear);
      if (copy.ok()) check_decodes(copy->code, kNear);
    }
    off += insn->length;
  }
}

}  // namespace hp::arch
