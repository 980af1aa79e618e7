// Sites, consumers and consumer arrays: what the dispatcher reads on every hit.
//
// Lifetime rules ("one of" lists, HP_ASSERTed where it is cheap):
//  - A ConsumerArray may be read while inside a read-side section of the site's scheme
//    (it is replaced whole and the old one retired after a grace period of that scheme).
//  - A Consumer may be used while: reachable from a ConsumerArray read under the scheme,
//    or holding Registry::mu_. It is freed with the array that last held it.
//  - A Site may be used while: holding Registry::mu_; or inside a read-side section of
//    the site's scheme after reaching it from a patched jump or the int3 table; or from a
//    return instance on the thread's own return stack (the site is kept as a zombie
//    until no return stack references it).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/batch_arena.h"
#include "core/site_key.h"
#include "core/text_patch.h"
#include "core/text_patch_short.h"
#include "hotprobe/probe.h"

namespace hp::core {

struct Site;

// Where a probe goes, in file terms (core/resolver.h makes it): what a consumer keeps so
// that its site can be built again when its module is mapped (dlopen) after being pending
// or unmapped (dlclose).
struct Place {
  SiteKey key{};  // (device, inode, file offset) of the probed instruction
  std::uint64_t function_file_offset = 0;
  std::uint64_t function_size = 0;  // 0: unknown (int3 mode)
  std::uint64_t offset = 0;         // probed instruction - function
  bool has_symbol = false;
  // In a fragment (NAME.cold): entered by a jump from the middle of its function, so
  // flags are live and the stack is the function's (an instruction probe, never a
  // function entry), and no return probe goes there.
  bool fragment = false;
  // No symbol: the extent is its FDE's (elf::ElfFile::cfi_extent), and the place is the
  // entry the loader selected for an IFUNC.
  bool cfi_entry = false;
  std::string describe;  // for messages: "libc.so.6:malloc+0x4"
};

// What of a ProbeSpec decides how its site is built (core/site_builder.h).
struct SiteOptions {
  bool allow_int3 = true;   // ProbeSpec::allow_int3
  bool force_int3 = false;  // ProbeSpec::force_int3
  bool run_at_ret = false;  // the entry handler is a `ret` probe's (core/ret_probe.h)
};

struct Consumer {
  HP_BATCH_ARENA_OBJECT
  std::uint64_t id = 0;
  hotprobe::Handler on_entry = nullptr;
  hotprobe::Handler on_return = nullptr;
  hotprobe::Filter filter = nullptr;
  void* cookie = nullptr;
  const void* engine = nullptr;  // the Engine::Impl that attached it
  Site* site = nullptr;          // null while pending (its module is not loaded)
  bool vector_registers = true;  // ProbeSpec::vector_registers: the user allows the saves
  bool saves_vectors = true;     // and the handlers may write one (arch/x86_64/clobber.h)
  Place place;                   // where it goes
  SiteOptions options;           // how its site is built
};

// What the dispatcher needs of a consumer, copied into the array so a hit reads the
// handler one load away from the array (not through the Consumer).
struct ConsumerEntry {
  hotprobe::Handler on_entry;
  void* cookie;
  hotprobe::Filter filter;
  hotprobe::Handler on_return;
  std::uint64_t id;
};

// Immutable once published.
struct ConsumerArray {
  std::uint32_t n = 0;
  bool any_return = false;
  // Some handler may write a vector register: the dispatcher saves xmm0-15 around them.
  bool saves_vectors = false;
  // Entry handlers only: no filter, no return handler, no vector saves (the fast loop).
  bool simple = false;
  // One consumer with a return handler (and maybe an entry handler), no filter, no
  // vector saves: the dispatcher's short path for a return probe.
  bool one_return = false;
  // simple with n == 1: what the trampoline's fast entry path runs itself.
  bool one_entry = false;
  ConsumerEntry e[1];  // n entries (allocated with the array)

  static ConsumerArray* make(const std::vector<Consumer*>& cs);
  static void destroy(ConsumerArray* a);
};

enum class SiteMode : std::uint8_t { jmp, int3 };

// Where each instruction that starts inside a jmp site's displaced bytes (not the first)
// went in its trampoline, for moving threads out. Held inline (not a vector per site): the
// displaced instructions all start below the jump's 5th byte, so there are at most 4.
class IpMap {
 public:
  using Entry = std::pair<std::uint32_t, std::uintptr_t>;
  static constexpr std::size_t kCapacity = 4;
  // False (and nothing added) when full.
  bool push_back(const Entry& e) noexcept {
    if (n_ == kCapacity) return false;
    e_[n_++] = e;
    return true;
  }
  const Entry* begin() const noexcept { return e_; }
  const Entry* end() const noexcept { return e_ + n_; }
  std::size_t size() const noexcept { return n_; }
  bool empty() const noexcept { return n_ == 0; }
  operator std::span<const Entry>() const noexcept { return {e_, n_}; }  // NOLINT: a view

 private:
  Entry e_[kCapacity] = {};
  std::uint8_t n_ = 0;
};

// One patched place. Keyed like a kernel uprobe by (device, inode, file offset).
struct Site {
  HP_BATCH_ARENA_OBJECT
  // Immutable after creation.
  std::uint64_t dev = 0, ino = 0, file_offset = 0;
  std::uintptr_t probe_address = 0;  // what Regs.rip and Hit.probe_address say
  std::uintptr_t patch_address = 0;  // first patched byte (after endbr64 at entry)
  SiteMode mode = SiteMode::jmp;
  hotprobe::Scheme scheme = hotprobe::Scheme::tasks_trace;
  bool at_entry = false;
  std::uint32_t return_depth = 64;  // the creating engine's EngineOptions::return_stack_depth
  PatchBytes original;              // the patched bytes as they were (inline: at most 15)
  PatchBytes patched;               // what was written
  std::uintptr_t trampoline = 0;    // entry trampoline (jmp mode)
  std::uint32_t trampoline_size = 0;
  // In the entry trampoline: what a return probe writes over the return address (0: the
  // scheme's shared return trampoline). Freed with the site, which a return instance
  // keeps alive (the zombie scan), so a late return still finds it.
  std::uintptr_t landing = 0;
  std::uintptr_t resume = 0;  // int3 mode: the relocated instruction + jmp back
  IpMap ip_map;               // inside the site -> trampoline
  PadClaim pad;  // a short-jump site's pad: `patched` is jmp rel8 to it (text_patch_short.h)
  std::uint32_t slot_chunk = 0, slot_index = 0;  // CodeMemory slot (jmp mode)
  std::uint32_t copy_chunk = 0, copy_index = 0;  // CodeMemory slot (int3 mode)

  // Read by the dispatcher (acquire) under the scheme's read lock: P1 matches P2.
  std::atomic<ConsumerArray*> consumers{nullptr};
  // Registry bookkeeping, under Registry::mu_.
  std::vector<Consumer*> members;
};

}  // namespace hp::core
