// The heads of live patching (text_patch.cc): how a site's first bytes hold arriving
// threads while its other bytes change, and the single stores that write them.
#include "core/text_patch_heads.h"

#include <atomic>

#include "core/text_patch_raw.h"

namespace hp::core::patching {

namespace {

constexpr std::uint8_t kJmpShort = 0xEB;
constexpr std::uint8_t kSelf = 0xFE;  // rel8 -2: EB FE is `jmp .`

// Two bytes with one store. Only called where [addr, addr + 2) lies inside one aligned
// 8-byte word (spin_head()), where the store is single-copy atomic and a thread fetching
// the instruction sees both old bytes or both new ones.
void write_pair(std::uintptr_t addr, std::uint8_t b0, std::uint8_t b1) {
  const auto v = static_cast<std::uint16_t>(b0 | (b1 << 8));
  __asm__ volatile("movw %1, %0"
                   : "=m"(*reinterpret_cast<std::uint16_t*>(addr))
                   : "r"(v)
                   : "memory");
}

// Two bytes that cross an 8-byte boundary inside one aligned 16-byte block: the whole
// block with one aligned 16-byte store, which processors with AVX perform atomically
// (Intel SDM vol. 3A 9.1.1, AMD APM vol. 2 7.3.2). The other 14 bytes are written with
// the values they hold: only the patcher writes code, under g_patch_mutex.
void write_pair_wide(std::uintptr_t addr, std::uint8_t b0, std::uint8_t b1) {
  const std::uintptr_t block = addr & ~std::uintptr_t{15};
  alignas(16) std::uint8_t bytes[16];
  for (std::size_t i = 0; i < 16; i++)
    bytes[i] = read_code_byte(block + i);
  bytes[addr - block] = b0;
  bytes[addr - block + 1] = b1;
  __asm__ volatile(
      "movdqa %1, %%xmm15\n\t"
      "movdqa %%xmm15, %0"
      : "=m"(*reinterpret_cast<std::uint8_t(*)[16]>(block))
      : "m"(bytes)
      : "xmm15", "memory");
}

std::atomic<bool> g_trap_heads_for_testing{false};

bool cpu_has_atomic_16_byte_stores() {
  static const bool avx = __builtin_cpu_supports("avx");
  return avx;
}

bool boundary_at(const PatchSite& s, std::uint32_t off) {
  for (const auto& [o, to] : s.ip_map) {
    if (o == off) return true;
  }
  return false;
}

// A pad site: a jump (E9 rel32) over a first instruction of 1 byte followed by one of at
// least 2, with both pairs [0, 2) and [1, 3) inside one aligned 8-byte word.
bool pad_shape(const PatchSite& s) {
  return s.new_bytes.size() >= 5 && s.new_bytes[0] == 0xE9 && boundary_at(s, 1) &&
         !boundary_at(s, 2) && (s.addr & 7) < 6;
}

void write_pair_for(Head h, std::uintptr_t addr, std::uint8_t b0, std::uint8_t b1) {
  if (h == Head::spin_wide) {
    write_pair_wide(addr, b0, b1);
  } else {
    write_pair(addr, b0, b1);
  }
}

}  // namespace

// Whether an instruction of the site's interior can run for long where it is: a
// rep-prefixed string instruction (one instruction, many iterations). Every other
// instruction a thread can be at inside a site leaves it after a few more (the displaced
// bytes hold no loop and no system call).
bool interior_may_run_long(const PatchSite& s) {
  auto rep_string_at = [&](std::size_t i) {
    bool rep = false;
    for (; i < s.old_bytes.size(); i++) {
      const std::uint8_t b = s.old_bytes[i];
      if (b == 0xF2 || b == 0xF3) {
        rep = true;
      } else if (!(b == 0x66 || b == 0x67 || b == 0x2E || b == 0x3E || b == 0x26 || b == 0x36 ||
                   b == 0x64 || b == 0x65 || b == 0xF0 || (b >= 0x40 && b <= 0x4F))) {
        return rep &&
               ((b >= 0xA4 && b <= 0xA7) || (b >= 0xAA && b <= 0xAF) || (b >= 0x6C && b <= 0x6F));
      }
    }
    return false;
  };
  for (const auto& [off, to] : s.ip_map) {
    if (rep_string_at(off)) return true;
  }
  return false;
}

// The head a site gets, before pads are placed (a pad site without a pad traps).
Head head_for(const PatchSite& s) {
  if (s.new_bytes.size() == 1) return Head::whole;
  if (g_trap_heads_for_testing.load(std::memory_order_relaxed)) return Head::trap;
  // A thread at offset 1 would run the FE: the first instruction must be longer.
  if (boundary_at(s, 1)) return pad_shape(s) ? Head::pad : Head::trap;
  if ((s.addr & 7) != 7) return Head::spin;
  if ((s.addr & 15) == 7 && cpu_has_atomic_16_byte_stores()) return Head::spin_wide;
  return Head::trap;
}

// The first byte step 3 writes.
std::size_t tail_start(Head h) {
  switch (h) {
    case Head::spin:
    case Head::spin_wide:
      return 2;
    case Head::pad:
      return 3;
    case Head::whole:
    case Head::trap:
      break;
  }
  return 1;
}

// Step 1: arriving threads stop (spin, or trap).
void write_hold(std::uintptr_t addr, Head h) {
  switch (h) {
    case Head::spin:
    case Head::spin_wide:
      write_pair_for(h, addr, kJmpShort, kSelf);
      break;
    case Head::pad:
      write_pair(addr + 1, kJmpShort, kSelf);
      break;
    case Head::trap:
      write_byte(addr, kInt3);
      break;
    case Head::whole:
      break;
  }
}

// Undoes write_hold with the site's bytes `b` (old or, at the end, new): held threads go on.
void release_hold(std::uintptr_t addr, Head h, const std::uint8_t* b) {
  switch (h) {
    case Head::spin:
    case Head::spin_wide:
      write_pair_for(h, addr, b[0], b[1]);
      break;
    case Head::pad:
      write_pair(addr + 1, b[1], b[2]);
      break;
    case Head::trap:
      write_byte(addr, b[0]);
      break;
    case Head::whole:
      break;
  }
}

// Step 4: the first bytes of the new code, in one store.
void write_final(std::uintptr_t addr, Head h, const std::uint8_t* b) {
  if (h == Head::pad || h == Head::whole) {
    write_byte(addr, b[0]);  // a pad site's [1, 3) already says EB FE: the jump to its pad
  } else {
    release_hold(addr, h, b);
  }
}

// Back from step 4 to step 3's state (a failed pad batch): the hold again.
void unwrite_final(std::uintptr_t addr, Head h, const std::uint8_t* old) {
  if (h == Head::pad || h == Head::whole) {
    write_byte(addr, old[0]);
  } else {
    write_hold(addr, h);
  }
}

void set_trap_heads_for_testing(bool on) noexcept {
  g_trap_heads_for_testing.store(on, std::memory_order_relaxed);
}

}  // namespace hp::core::patching
