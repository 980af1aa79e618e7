// Jump pads for sites whose first instruction is one byte (the `pad` head, text_patch_heads.h).
#include "core/text_patch_pads.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "base/assert.h"
#include "core/text_patch_raw.h"

namespace hp::core::patching {

namespace {

// Jump pads: a site whose first instruction is one byte (push rbp) cannot take the
// two-byte hold there (a thread between the two instructions would run the FE). It is held
// on its second instruction instead ([1, 3) = EB FE), and its jump is written so that
// those two bytes need not change: E9 EB FE h0 h1, a jump to a pad whose address ends in
// ...FEEB + 5 past the site, which holds `jmp [slot]`. Only the first byte (55 -> E9) and
// [3, 5) change, and a thread spinning at offset 1 never sees them; no new thread reaches
// offset 1 once the E9 is in place, so the spinners there are moved with the move signal.
//
// A pad belongs to one site address for the life of the process (a thread preempted on
// a pad's jump may execute it at any later time, so its slot must always lead somewhere
// right for that site): its slot holds the pad's own address while a transaction is in
// flight (a `jmp [slot]` that spins, reading the slot each time), the trampoline while
// the site is attached, and the site's address after (the function as it is then).
// Pads live in 64 KiB regions near the sites (a pad's offset in its region is fixed by the
// site's address), never unmapped: their memory is bounded by the code that was probed.
constexpr std::uintptr_t kPadRegionCode = 0x10000 + kPage;  // the pads (the last one may overrun)
constexpr std::uintptr_t kPadRegionSlots = 0x18000;         // 8-byte slots
constexpr std::uintptr_t kPadRegionSize = kPadRegionCode + kPadRegionSlots;
constexpr std::size_t kPadLength = 6;  // FF 25 disp32: jmp [rip + disp32]
constexpr std::uint32_t kPadLow = 0xFEEB;

struct PadRegion {
  std::uintptr_t base = 0;  // 64 KiB aligned
  std::uint32_t slots_used = 0;
  bool writable = false;  // code made writable in this transaction
  std::vector<std::uint64_t> busy = std::vector<std::uint64_t>((kPadRegionCode + 63) / 64);

  bool byte_busy(std::uintptr_t off) const { return (busy[off / 64] >> (off % 64)) & 1; }
  void set_busy(std::uintptr_t off) { busy[off / 64] |= std::uint64_t{1} << (off % 64); }
};

}  // namespace

// Under g_patch_mutex; never freed, never destroyed (no static destructor: pads stay in
// the code for the life of the process, and threads may still jump through them at exit).
namespace {
std::vector<PadRegion*>& g_pad_regions = *new std::vector<PadRegion*>;
}  // namespace
std::unordered_map<std::uintptr_t, Pad>& g_pads =
    *new std::unordered_map<std::uintptr_t, Pad>;  // site address -> its pad; never erased

namespace {

bool rel32_reach(std::uintptr_t from_end, std::uintptr_t to) {
  const auto d = static_cast<std::int64_t>(to - from_end);
  return d >= INT32_MIN && d <= INT32_MAX;
}

// A free, 64 KiB aligned place for a region within rel32 reach of `site`, closest first.
std::uintptr_t region_place_near(std::uintptr_t site) {
  FILE* f = std::fopen("/proc/self/maps", "re");
  if (!f) return 0;
  std::vector<std::pair<std::uintptr_t, std::uintptr_t>> used;
  char line[4096];
  while (std::fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    if (std::sscanf(line, "%lx-%lx", &lo, &hi) == 2) used.push_back({lo, hi});
  }
  std::fclose(f);
  constexpr std::uintptr_t kAlign = 0x10000, kLowest = 0x100000;
  constexpr std::uintptr_t kTop = std::uintptr_t{1} << 47;
  constexpr std::uintptr_t kReach = 0x70000000;  // well inside +-2 GiB, for every pad
  const std::uintptr_t lo_limit = site > kReach + kLowest ? site - kReach : kLowest;
  const std::uintptr_t hi_limit = std::min(site + kReach, kTop);
  std::uintptr_t best = 0, best_dist = ~std::uintptr_t{0};
  std::uintptr_t gap_lo = kLowest;
  used.push_back({kTop, kTop});
  for (const auto& [lo, hi] : used) {
    // The gap [gap_lo, lo): the aligned place in it closest to the site.
    const std::uintptr_t first = (std::max(gap_lo, lo_limit) + kAlign - 1) & ~(kAlign - 1);
    const std::uintptr_t end = std::min(lo, hi_limit);
    if (end > first && end - first >= kPadRegionSize) {
      const std::uintptr_t last = (end - kPadRegionSize) & ~(kAlign - 1);
      std::uintptr_t cand = site <= first ? first : site >= last ? last : site & ~(kAlign - 1);
      if (cand < first) cand = first;
      const std::uintptr_t dist = cand > site ? cand - site : site - cand;
      if (cand <= last && dist < best_dist) {
        best = cand;
        best_dist = dist;
      }
    }
    gap_lo = std::max(gap_lo, hi);
  }
  return best;
}

PadRegion* new_pad_region(std::uintptr_t site) {
  const std::uintptr_t at = region_place_near(site);
  if (!at) return nullptr;
  void* m = mmap(reinterpret_cast<void*>(at), kPadRegionSize, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  if (m == MAP_FAILED) return nullptr;
  if (reinterpret_cast<std::uintptr_t>(m) != at) {
    munmap(m, kPadRegionSize);
    return nullptr;
  }
  auto* r = new PadRegion;
  r->base = at;
  r->writable = true;  // the code part becomes r-x at the end of the transaction
  g_pad_regions.push_back(r);
  return r;
}

}  // namespace

// The pad of the site at `addr`, placed now if it has none; null when no region in reach
// has its offset free and no new region can be mapped (the site then traps).
Pad* pad_for(std::uintptr_t addr) {
  if (auto it = g_pads.find(addr); it != g_pads.end()) return &it->second;
  const std::uintptr_t off = (addr + 5 + kPadLow) & 0xFFFF;
  auto fits = [&](const PadRegion* r) {
    if (!rel32_reach(addr + 5, r->base + off)) return false;
    if (r->slots_used >= kPadRegionSlots / 8) return false;
    for (std::uintptr_t i = off; i < off + kPadLength; i++) {
      if (r->byte_busy(i)) return false;
    }
    return true;
  };
  PadRegion* region = nullptr;
  for (PadRegion* r : g_pad_regions) {
    if (fits(r)) {
      region = r;
      break;
    }
  }
  if (!region) {
    region = new_pad_region(addr);
    if (!region || !fits(region)) return nullptr;
  }
  if (!region->writable) {
    if (mprotect(reinterpret_cast<void*>(region->base), kPadRegionCode,
                 PROT_READ | PROT_WRITE | PROT_EXEC) != 0) {
      return nullptr;
    }
    region->writable = true;
  }
  for (std::uintptr_t i = off; i < off + kPadLength; i++)
    region->set_busy(i);
  Pad pad;
  pad.at = region->base + off;
  const std::uintptr_t slot = region->base + kPadRegionCode + 8 * region->slots_used++;
  pad.slot = reinterpret_cast<std::atomic<std::uintptr_t>*>(slot);
  pad.slot->store(addr, std::memory_order_relaxed);
  const auto disp = static_cast<std::int32_t>(slot - (pad.at + kPadLength));
  write_byte(pad.at, 0xFF);
  write_byte(pad.at + 1, 0x25);
  for (int i = 0; i < 4; i++) {
    write_byte(pad.at + 2 + i,
               static_cast<std::uint8_t>(static_cast<std::uint32_t>(disp) >> (8 * i)));
  }
  return &g_pads.emplace(addr, pad).first->second;
}

// The code of regions written in this transaction becomes r-x again.
void seal_pad_regions() {
  for (PadRegion* r : g_pad_regions) {
    if (!r->writable) continue;
    mprotect(reinterpret_cast<void*>(r->base), kPadRegionCode, PROT_READ | PROT_EXEC);
    r->writable = false;
  }
}

// The site's jump to its pad: E9 EB FE h0 h1, then the caller's bytes.
PatchBytes jump_to_pad(const PatchSite& s, const Pad& pad) {
  std::uint8_t b[PatchBytes::kCapacity];
  const auto rel = static_cast<std::uint32_t>(pad.at - (s.addr + 5));
  HP_CHECK((rel & 0xFFFF) == kPadLow);
  b[0] = 0xE9;
  for (int i = 0; i < 4; i++)
    b[1 + i] = static_cast<std::uint8_t>(rel >> (8 * i));
  for (std::size_t i = 5; i < s.new_bytes.size(); i++)
    b[i] = s.new_bytes[i];
  return PatchBytes(std::span<const std::uint8_t>(b, s.new_bytes.size()));
}

// Where the caller's jump goes (E9 rel32 at addr).
std::uintptr_t jump_target(std::uintptr_t addr, const PatchBytes& b) {
  std::uint32_t rel = 0;
  for (int i = 0; i < 4; i++)
    rel |= static_cast<std::uint32_t>(b[1 + i]) << (8 * i);
  return addr + 5 +
         static_cast<std::uintptr_t>(static_cast<std::int64_t>(static_cast<std::int32_t>(rel)));
}

}  // namespace hp::core::patching
