// Trampoline memory: executable slots within rel32 reach of a given address.
//
// W^X without toggling: each chunk is a memfd mapped twice, once PROT_READ|PROT_EXEC near
// the code it serves and once PROT_READ|PROT_WRITE anywhere. write() goes through the
// writable alias; no mapping is ever writable and executable, and no mprotect flips a page
// that another thread may be executing (the problem with "map RW, write, mprotect RX"
// when one page holds many slots).
//
// Placement: free gaps are read from /proc/self/maps and tried nearest first with
// MAP_FIXED_NOREPLACE; a slot is returned only if every byte of it is within
// kCodeReach of `near`, which leaves room for the site's own length.
//
// Lifetime: free() makes a slot reusable at once. The core calls it only after its rules
// pass (site unpatched, one grace period, no thread's ip inside; DESIGN.md "Lifetimes").
// Chunks are unmapped by the destructor only.
//
// fork(): MAP_SHARED pages would stay shared with a child, and a slot the parent reuses
// would change the child's code. pthread_atfork handlers snapshot every chunk into a new
// memfd before the fork (under the lock) and map it at the same address in the child. Raw clone()
// or syscall(SYS_fork) bypass the handler; vfork/posix_spawn children share memory anyway.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "base/error.h"
#include "base/thread_annotations.h"

namespace hp::arch {

// Every byte of a slot is within this distance of the `near` it was allocated for.
inline constexpr std::int64_t kCodeReach = (std::int64_t{1} << 31) - (std::int64_t{1} << 20);

struct CodeSlot;
// Whether every byte of `slot` is within kCodeReach of `address`.
bool slot_reaches(const CodeSlot& slot, std::uint64_t address);

struct CodeSlot {
  std::uint64_t address = 0;  // executable address
  std::uint32_t size = 0;
  std::uint32_t chunk = 0;            // internal
  std::uint32_t index = 0;            // internal
  std::uint8_t* writable = nullptr;   // internal: the slot's writable alias
  std::uint32_t fork_generation = 0;  // internal: CodeMemory's, when allocated
};

class CodeMemory {
 public:
  explicit CodeMemory(std::uint32_t slot_size = 1024, std::uint32_t chunk_size = 64 * 1024);
  ~CodeMemory();
  CodeMemory(const CodeMemory&) = delete;
  CodeMemory& operator=(const CodeMemory&) = delete;

  std::uint32_t slot_size() const noexcept { return slot_size_; }

  // A free slot within kCodeReach of `near` (Errc::no_memory_in_reach when none can be
  // mapped there).
  Result<CodeSlot> allocate(std::uint64_t near) HP_EXCLUDES(mu_);
  // As many slots, each within kCodeReach of its `near`, under one lock (for a batch that
  // builds its trampolines on two threads, which would otherwise take turns at the lock).
  std::vector<Result<CodeSlot>> allocate_many(std::span<const std::uint64_t> near) HP_EXCLUDES(mu_);
  // Copies `code` into the slot through the writable alias, and int3 over the rest. The
  // owner of a slot (from allocate() until free()) writes it without the lock: the alias
  // of an allocated slot does not move, except in a fork child, which remaps every chunk
  // (so a slot from before the fork is written through the chunk's new view, locked).
  Result<void> write(const CodeSlot& slot, std::span<const std::uint8_t> code);
  // Copies `bytes` to slot + offset, leaving the rest alone (for patching code that lives
  // in a slot, as tests and generated stubs do).
  Result<void> write_at(const CodeSlot& slot, std::uint32_t offset,
                        std::span<const std::uint8_t> bytes) HP_EXCLUDES(mu_);
  // Frees the slot and writes int3 over its first kPoisonBytes (where a jump to it lands):
  // write() fills a slot's unused tail with int3, so a stray jump into a freed slot
  // traps. The rest is left as it was: a batch of 10,000 frees would otherwise write
  // 7.5 MiB while the next batch builds its trampolines on the other CPU.
  void free(const CodeSlot& slot) HP_EXCLUDES(mu_);
  // Frees every slot of `slots` under one lock (a detached batch's trampolines).
  void free_many(std::span<const CodeSlot> slots) HP_EXCLUDES(mu_);
  static constexpr std::uint32_t kPoisonBytes = 64;

  // Counts, for tests and statistics.
  std::size_t chunk_count() const HP_EXCLUDES(mu_);
  std::size_t used_slots() const HP_EXCLUDES(mu_);

  // The fork handlers (internal).
  void lock_for_fork() HP_ACQUIRE(mu_);
  void unlock_after_fork(bool in_child) HP_RELEASE(mu_);

 private:
  struct Chunk {
    std::uint64_t exec = 0;         // PROT_READ|PROT_EXEC view
    std::uint8_t* write = nullptr;  // PROT_READ|PROT_WRITE view
    std::vector<bool> used;
    std::uint32_t used_count = 0;
    std::uint32_t first_free = 0;  // no free slot below this index
    std::uint32_t populated = 0;   // bytes of the writable view populated, from its start
    int fork_fd = -1;  // the child's snapshot, between fork's prepare and child handlers
  };
  Result<std::uint32_t> map_chunk_near(std::uint64_t near) HP_REQUIRES(mu_);
  std::optional<CodeSlot> take_slot(std::uint32_t chunk, std::uint64_t near) HP_REQUIRES(mu_);
  Result<CodeSlot> allocate_locked(std::uint64_t near) HP_REQUIRES(mu_);
  bool slot_in_reach(const Chunk& c, std::uint32_t index, std::uint64_t near) const;
  void populate_through(Chunk& c, std::uint32_t end) const;
  void free_locked(const CodeSlot& slot) HP_REQUIRES(mu_);
  void remap_private_copy() HP_REQUIRES(mu_);

  std::atomic<std::uint32_t> fork_generation_{0};  // fork children remapped so far
  const std::uint32_t slot_size_;
  const std::uint32_t chunk_size_;
  mutable Mutex mu_;
  std::vector<Chunk> chunks_ HP_GUARDED_BY(mu_);
};

}  // namespace hp::arch
