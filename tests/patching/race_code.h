// A page of code the patching tests switch between two behaviours, with the first
// instruction shapes the protocol distinguishes:
//
//   f:     <prologue>                 the site (whole instructions, at least 5 bytes)
//          <rest>; mov eax, 1; ret    "unprobed": 1
//   copy:  <prologue>; jmp f+len      the relocated site (where the ip map points)
//   g:     movabs rax, &hits; lock inc qword [rax]; mov eax, 2; ret
//                                     "probed": counts the hit, returns 2
#pragma once

#include <signal.h>
#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "core/text_patch.h"

namespace hp_test {

struct Prologue {
  const char* name;
  std::vector<std::uint8_t> site;         // whole instructions
  std::vector<std::uint32_t> boundaries;  // instruction starts inside the site
  std::vector<std::uint8_t> rest;         // after the site, before "mov eax, 1; ret"
};

// 66 90 (xchg ax, ax) | 0f 1f 00 (nopl [rax]): a 2-byte first instruction.
inline Prologue two_byte_first() {
  return {"two_byte_first", {0x66, 0x90, 0x0f, 0x1f, 0x00}, {2}, {}};
}
// f3 0f 1e fa (endbr64) | 0f 1f 00: what Debian's -fcf-protection code starts with.
inline Prologue endbr64_first() {
  return {"endbr64_first", {0xf3, 0x0f, 0x1e, 0xfa, 0x0f, 0x1f, 0x00}, {4}, {}};
}
// 55 (push rbp) | 48 89 e5 (mov rbp, rsp) | 48 89 c0 (mov rax, rax); ... 5d (pop rbp).
inline Prologue push_rbp_first() {
  return {"push_rbp_first", {0x55, 0x48, 0x89, 0xe5, 0x48, 0x89, 0xc0}, {1, 4}, {0x5d}};
}

// 66 90 seven times: a 14-byte site of 2-byte instructions, where a caller spends most of
// its time strictly inside the site (six interior instruction starts).
inline Prologue short_sled() {
  return {"short_sled",
          {0x66, 0x90, 0x66, 0x90, 0x66, 0x90, 0x66, 0x90, 0x66, 0x90, 0x66, 0x90, 0x66, 0x90},
          {2, 4, 6, 8, 10, 12},
          {}};
}

class RaceCode {
 public:
  // `misalign`: f's offset from a 16-byte boundary.
  RaceCode(const Prologue& p, unsigned misalign) : prologue_(p) {
    base_ = static_cast<std::uint8_t*>(
        mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    std::memset(base_, 0xCC, 4096);
    std::uint8_t* q = base_ + 64 + misalign;
    f = reinterpret_cast<std::uintptr_t>(q);
    put(q, p.site);
    put(q, p.rest);
    put(q, {0xb8, 1, 0, 0, 0, 0xc3});
    q = base_ + 256;
    copy = reinterpret_cast<std::uintptr_t>(q);
    put(q, p.site);
    q[0] = 0xe9;
    rel32(q + 1, f + p.site.size());
    q = base_ + 512;
    g = reinterpret_cast<std::uintptr_t>(q);
    auto counter = reinterpret_cast<std::uint64_t>(&hits);
    *q++ = 0x48;
    *q++ = 0xb8;
    std::memcpy(q, &counter, 8);
    q += 8;
    put(q, {0xf0, 0x48, 0xff, 0x00, 0xb8, 2, 0, 0, 0, 0xc3});
    mprotect(base_, 4096, PROT_READ | PROT_EXEC);
    for (std::uint32_t off : p.boundaries)
      ip_map.push_back({off, copy + off});
  }
  ~RaceCode() { munmap(base_, 4096); }
  RaceCode(const RaceCode&) = delete;
  RaceCode& operator=(const RaceCode&) = delete;

  int call() const { return reinterpret_cast<int (*)()>(f)(); }

  std::vector<std::uint8_t> jump() const {
    std::vector<std::uint8_t> b(prologue_.site.size(), 0xCC);
    b[0] = 0xe9;
    std::int32_t r = static_cast<std::int32_t>(g - (f + 5));
    std::memcpy(&b[1], &r, 4);
    return b;
  }
  hp::core::PatchSite attach() const {
    hp::core::PatchSite s;
    s.addr = f;
    s.old_bytes = prologue_.site;
    s.new_bytes = jump();
    s.trap_target = copy;
    s.ip_map = ip_map;
    return s;
  }
  hp::core::PatchSite detach() const {
    hp::core::PatchSite s;
    s.addr = f;
    s.old_bytes = jump();
    s.new_bytes = prologue_.site;
    s.trap_target = g;
    return s;
  }

  std::atomic<std::uint64_t> hits{0};
  std::uintptr_t f = 0, copy = 0, g = 0;
  std::vector<std::pair<std::uint32_t, std::uintptr_t>> ip_map;

 private:
  static void put(std::uint8_t*& q, const std::vector<std::uint8_t>& b) {
    if (b.empty()) return;  // memcpy's source may not be null, even for 0 bytes
    std::memcpy(q, b.data(), b.size());
    q += b.size();
  }
  static void rel32(std::uint8_t* at, std::uintptr_t to) {
    auto r = static_cast<std::int32_t>(to - (reinterpret_cast<std::uintptr_t>(at) + 4));
    std::memcpy(at, &r, 4);
  }
  Prologue prologue_;
  std::uint8_t* base_ = nullptr;
};

}  // namespace hp_test
