// Short-jump sites' pads (core/text_patch_short.h).
#include "core/text_patch_short.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <span>
#include <vector>

#include "arch/x86_64/decode.h"
#include "base/assert.h"
#include "core/resolver.h"
#include "elf/elf_file.h"

namespace hp::core {
namespace {

// Claimed bytes by address (a pad's 5, a head's padding byte), process-wide (sites are
// built on two threads in a large batch). Never destroyed: a site may outlive static
// destructors.
struct Claim {
  std::size_t length;
  std::uintptr_t owner;  // the site's place (its patch address, +2 for a pad); 0: none
  int count;             // claims of one owner: a site and the one it replaces
};
std::mutex& g_claims_mu = *new std::mutex;
std::map<std::uintptr_t, Claim>& g_claims = *new std::map<std::uintptr_t, Claim>;
std::set<std::uintptr_t>& g_kept = *new std::set<std::uintptr_t>;  // never released
std::atomic<bool> g_ret_short_jumps{true};                         // use_ret_short_jumps

// Whether a claim holds a byte of [at, at + length) (one by `owner` of exactly these
// bytes aside, when `owner` is not 0); under g_claims_mu.
bool claimed(std::uintptr_t at, std::size_t length, std::uintptr_t owner = 0) {
  auto it = g_claims.lower_bound(at >= kShortPadLength ? at - kShortPadLength + 1 : 0);
  for (; it != g_claims.end() && it->first < at + length; ++it) {
    const bool shared =
        owner && it->second.owner == owner && it->first == at && it->second.length == length;
    if (it->first + it->second.length > at && !shared) return true;
  }
  return false;
}

void unclaim(std::uintptr_t at) {
  auto it = g_claims.find(at);
  if (it == g_claims.end() || g_kept.count(at)) return;
  if (--it->second.count == 0) g_claims.erase(it);
}

const std::uint8_t* code_at(std::uintptr_t a) {
  return reinterpret_cast<const std::uint8_t*>(a);
}

// A padding instruction: int3, or a nop (90, 0F 1F /0) behind 66 and 2E prefixes, as
// assemblers and linkers fill the space between functions.
bool is_fill(std::uintptr_t a, std::size_t len) {
  const std::uint8_t* p = code_at(a);
  if (len == 1 && p[0] == 0xCC) return true;
  std::size_t i = 0;
  while (i < len && (p[i] == 0x66 || p[i] == 0x2E))
    i++;
  if (i < len && p[i] == 0x90) return i + 1 == len;
  return i + 2 < len && p[i] == 0x0F && p[i + 1] == 0x1F && ((p[i + 2] >> 3) & 7) == 0;
}

struct Extent {
  std::uint64_t start, end;  // file offsets
};

// The function holding file offset `off`: its FDE, else a sized symbol.
std::optional<Extent> extent_at(const elf::ElfFile& file, std::uint64_t off) {
  if (auto e = file.cfi_extent(off); e && e->size)
    return Extent{e->file_offset, e->file_offset + e->size};
  if (const elf::Symbol* s = file.containing_offset(off); s && s->size)
    return Extent{s->file_offset, s->file_offset + s->size};
  return std::nullopt;
}

// Whether the function [start, end) (loaded at `bias`) decodes to its end and its last
// instruction does not fall through into what follows it.
bool ends_flow(std::uintptr_t start, std::uintptr_t end) {
  arch::InsnKind last = arch::InsnKind::other;
  for (std::uintptr_t a = start; a < end;) {
    auto insn =
        arch::decode_shape(std::span<const std::uint8_t>(
                               code_at(a), std::min<std::uintptr_t>(end - a, arch::kMaxInsnLength)),
                           a);
    if (!insn.ok()) return false;
    last = insn->kind;
    a += insn->length;
    if (a > end) return false;
  }
  return last == arch::InsnKind::jmp_rel || last == arch::InsnKind::ret ||
         last == arch::InsnKind::jmp_indirect || last == arch::InsnKind::trap ||
         last == arch::InsnKind::int3;
}

}  // namespace

PadClaim& PadClaim::operator=(PadClaim&& o) noexcept {
  if (this != &o) {
    release();
    at_ = std::exchange(o.at_, 0);
    also_at_ = std::exchange(o.also_at_, 0);
    original = o.original;
    jump = o.jump;
  }
  return *this;
}

std::optional<PadClaim> PadClaim::claim(std::uintptr_t at, std::size_t length,
                                        std::uintptr_t owner) {
  HP_CHECK(length > 0 && length <= kShortPadLength);
  std::lock_guard<std::mutex> lock(g_claims_mu);
  if (claimed(at, length, owner)) return std::nullopt;
  auto it = g_claims.emplace(at, Claim{length, owner, 0}).first;
  it->second.count++;
  PadClaim c;
  c.at_ = at;
  return c;
}

void PadClaim::take_also(PadClaim&& other) {
  HP_CHECK(!also_at_ && !other.also_at_ && other.at_);
  also_at_ = std::exchange(other.at_, 0);
}

void PadClaim::release() noexcept {
  if (!at_ && !also_at_) return;
  std::lock_guard<std::mutex> lock(g_claims_mu);
  if (at_) unclaim(at_);
  if (also_at_) unclaim(also_at_);
  at_ = also_at_ = 0;
}

void keep_pad_claimed(std::uintptr_t at) {
  std::lock_guard<std::mutex> lock(g_claims_mu);
  g_kept.insert(at);
  g_claims.emplace(at, Claim{kShortPadLength, 0, 1});
}

bool pad_claimed_for_testing(std::uintptr_t at) {
  std::lock_guard<std::mutex> lock(g_claims_mu);
  return claimed(at, kShortPadLength);
}

std::optional<PadClaim> find_short_pad(const elf::ElfFile& file, std::uintptr_t bias,
                                       std::uintptr_t from) {
  // Pads start in [from - 128, from + 127]; a gap that holds one starts at most 64 bytes
  // before that (functions are aligned to at most 64 bytes).
  constexpr std::uint64_t kAlignSlack = 64;
  const std::uintptr_t lo = from - 128, hi = from + 127 + kShortPadLength;
  std::vector<std::uintptr_t> candidates;
  std::optional<Extent> prev;
  for (std::uint64_t off = lo - bias - kAlignSlack; off < hi - bias;) {
    if (!file.offset_is_code(off)) {
      prev.reset();
      off++;
      continue;
    }
    if (auto e = extent_at(file, off)) {
      prev = e;
      off = std::max(e->end, off + 1);
      continue;
    }
    if (!prev || prev->end != off) {  // code no function covers: not a gap we can read
      prev.reset();
      off++;
      continue;
    }
    // A gap after the function `prev`: its fill, decoded from the function's end.
    const bool flow_ends = ends_flow(prev->start + bias, prev->end + bias);
    bool only_int3 = true;
    std::uint64_t a = off;
    while (a < hi - bias && file.offset_is_code(a) && !extent_at(file, a)) {
      auto insn = arch::decode_shape(
          std::span<const std::uint8_t>(code_at(a + bias), arch::kMaxInsnLength), a + bias);
      if (!insn.ok() || !is_fill(a + bias, insn->length)) break;
      only_int3 &= insn->length == 1 && *code_at(a + bias) == 0xCC;
      if (!flow_ends && !only_int3) break;  // a fall-through would execute it
      a += insn->length;
    }
    // [off, a) is fill; a pad's five bytes must not hold the start of a function either.
    for (std::uint64_t p = off; p + kShortPadLength <= a; p++) {
      const std::uintptr_t at = p + bias;
      if (at >= lo && at + kShortPadLength <= hi) candidates.push_back(at);
    }
    prev.reset();
    off = a > off ? a : off + 1;
  }
  std::sort(candidates.begin(), candidates.end(), [&](std::uintptr_t x, std::uintptr_t y) {
    const auto dx = x > from ? x - from : from - x, dy = y > from ? y - from : from - y;
    return dx < dy || (dx == dy && x < y);
  });
  for (std::uintptr_t at : candidates) {
    bool clear = true;  // no function starts under the pad (a fill run that misdecoded)
    for (std::uintptr_t x = at; x < at + kShortPadLength && clear; x++)
      clear = !extent_at(file, x - bias);
    if (!clear) continue;
    // Owned by the site's place: a site built where a detached one is not reclaimed yet
    // shares its pad (restored to the file's bytes by that detach) instead of taking an
    // int3 for want of another.
    if (auto c = PadClaim::claim(at, kShortPadLength, from)) {
      c->original = PatchBytes(std::span<const std::uint8_t>(code_at(at), kShortPadLength));
      return c;
    }
  }
  return std::nullopt;
}

Result<arch::DisplacementPlan> plan_ret_over_padding(const elf::ElfFile& file, std::uintptr_t bias,
                                                     std::uintptr_t function, std::uint64_t offset,
                                                     std::optional<PadClaim>& head_byte) {
  auto decode = [](std::uintptr_t a) {
    return arch::decode_shape(std::span<const std::uint8_t>(code_at(a), arch::kMaxInsnLength), a);
  };
  arch::DisplacementPlan plan;
  plan.probe_address = function + offset;
  std::uintptr_t at = plan.probe_address;
  auto first = decode(at);
  if (!first.ok()) return first.error();
  const bool endbr = offset == 0 && first->kind == arch::InsnKind::endbr64;
  if (endbr) {
    at += first->length;
    first = decode(at);
    if (!first.ok()) return first.error();
  }
  if (first->length != 1 || first->kind != arch::InsnKind::ret) {
    return Error(Errc::not_relocatable,
                 "the 1-byte instruction at " + hex(at) + " is not a `ret` before padding");
  }
  // The byte after the ret: outside every function, and fill up to the next one.
  const std::uintptr_t pad_byte = at + 1;
  auto not_padding = [&](const std::string& why) {
    return Error(Errc::not_relocatable, "the byte after the 1-byte `ret` at " + hex(at) + " " +
                                            why + ": a 2-byte jump would cover code");
  };
  if (!file.offset_is_code(pad_byte - bias) || extent_at(file, pad_byte - bias))
    return not_padding("belongs to a function");
  constexpr std::uintptr_t kFillScan = 64;
  for (std::uintptr_t a = pad_byte; a < pad_byte + kFillScan;) {
    if (a > pad_byte && (!file.offset_is_code(a - bias) || extent_at(file, a - bias))) break;
    auto insn = decode(a);
    if (!insn.ok() || !is_fill(a, insn->length)) return not_padding("is not fill (int3 or nop)");
    a += insn->length;
  }
  // A site at this address that is being replaced (detached, its memory not yet
  // reclaimed) may still hold the byte: both are never patched at once.
  head_byte = PadClaim::claim(pad_byte, 1, at);
  if (!head_byte) return not_padding("is another site's pad");
  plan.patch_address = at;
  plan.patch_offset = static_cast<std::uint32_t>(at - function);
  plan.length = 1;
  auto entry = decode(function);
  plan.at_entry =
      offset == 0 || (offset == 4 && entry.ok() && entry->kind == arch::InsnKind::endbr64);
  plan.flags_live = !plan.at_entry;
  plan.insns = {*first};
  plan.original.assign(code_at(at), code_at(at) + 1);
  return plan;
}

void use_ret_short_jumps(bool on) {
  g_ret_short_jumps.store(on);
}

bool ret_short_jumps_enabled() {
  return g_ret_short_jumps.load(std::memory_order_relaxed);
}

}  // namespace hp::core
