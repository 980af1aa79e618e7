#include "arch/x86_64/code_memory.h"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <optional>
#include <string>

#include "base/assert.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

namespace hp::arch {
namespace {

constexpr std::uint64_t kLowest = 0x10000;             // vm.mmap_min_addr
constexpr std::uint64_t kHighest = 0x7ffffffff000ULL;  // top of the 47-bit user space

struct Range {
  std::uint64_t lo, hi;
};

std::vector<Range> read_mappings() {
  std::vector<Range> out;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    unsigned long long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%llx-%llx", &lo, &hi) == 2) out.push_back({lo, hi});
  }
  std::sort(out.begin(), out.end(), [](const Range& a, const Range& b) { return a.lo < b.lo; });
  return out;
}

std::uint64_t distance(std::uint64_t a, std::uint64_t b) {
  return a > b ? a - b : b - a;
}

// Candidate chunk addresses inside free gaps, nearest to `near` first.
std::vector<std::uint64_t> candidates(std::uint64_t near, std::uint64_t size) {
  const std::uint64_t page = static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
  const std::uint64_t reach = static_cast<std::uint64_t>(kCodeReach);
  const std::uint64_t win_lo = near > kLowest + reach ? near - reach : kLowest;
  const std::uint64_t win_hi = std::min(near + reach, kHighest);  // chunk end bound
  std::vector<Range> maps = read_mappings();
  std::vector<Range> gaps;
  std::uint64_t prev = kLowest;
  for (const Range& m : maps) {
    if (m.lo > prev) gaps.push_back({prev, m.lo});
    prev = std::max(prev, m.hi);
  }
  if (prev < kHighest) gaps.push_back({prev, kHighest});

  std::vector<std::uint64_t> out;
  for (Range g : gaps) {
    // Keep a page between us and neighbours so a stack or heap can still grow a bit.
    g.lo = std::max(g.lo + page, win_lo);
    g.hi = std::min(g.hi > page ? g.hi - page : 0, win_hi);
    g.lo = (g.lo + page - 1) & ~(page - 1);
    if (g.hi < g.lo + size) continue;
    std::uint64_t at;
    if (near < g.lo) {
      at = g.lo;
    } else if (near + size > g.hi) {
      at = (g.hi - size) & ~(page - 1);
    } else {
      at = near & ~(page - 1);
    }
    out.push_back(at);
  }
  std::sort(out.begin(), out.end(), [near](std::uint64_t a, std::uint64_t b) {
    return distance(a, near) < distance(b, near);
  });
  return out;
}

// A memfd of `size` bytes, holding a copy of `initial` when given; -1 on failure.
int make_memfd(std::uint64_t size, const std::uint8_t* initial) {
  const int fd = memfd_create("hotprobe-trampolines", MFD_CLOEXEC);
  if (fd < 0) return -1;
  bool ok = ftruncate(fd, static_cast<off_t>(size)) == 0;
  if (ok && initial) ok = pwrite(fd, initial, size, 0) == static_cast<ssize_t>(size);
  if (!ok) {
    const int err = errno;
    close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

// Maps `fd` executable at exactly `at` (replacing what is there when `replace`) and
// writable elsewhere.
bool map_views(int fd, std::uint64_t at, std::uint64_t size, bool replace, std::uint8_t*& write) {
  void* w = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (w == MAP_FAILED) return false;
  const int fixed = replace ? MAP_FIXED : MAP_FIXED_NOREPLACE;
  void* x =
      mmap(reinterpret_cast<void*>(at), size, PROT_READ | PROT_EXEC, MAP_SHARED | fixed, fd, 0);
  if (x != MAP_FAILED && reinterpret_cast<std::uint64_t>(x) != at) {
    munmap(x, size);  // a kernel without MAP_FIXED_NOREPLACE treated it as a hint
    x = MAP_FAILED;
    errno = EEXIST;
  }
  if (x == MAP_FAILED) {
    const int err = errno;
    munmap(w, size);
    errno = err;
    return false;
  }
  write = static_cast<std::uint8_t*>(w);
  return true;
}

// Every live CodeMemory, for the fork handlers.
Mutex g_registry_mu;
std::vector<CodeMemory*>& registry() {
  static auto& r = *new std::vector<CodeMemory*>;  // never destroyed: used until _exit
  return r;
}

void fork_prepare() HP_NO_THREAD_SAFETY_ANALYSIS {
  g_registry_mu.lock();
  for (CodeMemory* m : registry())
    m->lock_for_fork();
}
void fork_parent() HP_NO_THREAD_SAFETY_ANALYSIS {
  for (CodeMemory* m : registry())
    m->unlock_after_fork(false);
  g_registry_mu.unlock();
}
void fork_child() HP_NO_THREAD_SAFETY_ANALYSIS {
  for (CodeMemory* m : registry())
    m->unlock_after_fork(true);
  g_registry_mu.unlock();
}

void register_memory(CodeMemory* m) {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(fork_prepare, fork_parent, fork_child); });
  MutexLock lock(g_registry_mu);
  registry().push_back(m);
}

void unregister_memory(CodeMemory* m) {
  MutexLock lock(g_registry_mu);
  auto& r = registry();
  r.erase(std::remove(r.begin(), r.end(), m), r.end());
}

}  // namespace

CodeMemory::CodeMemory(std::uint32_t slot_size, std::uint32_t chunk_size)
    : slot_size_(slot_size), chunk_size_(chunk_size) {
  const auto page = static_cast<std::uint32_t>(sysconf(_SC_PAGESIZE));
  HP_CHECK_MSG(slot_size_ >= 16 && slot_size_ % 16 == 0, "slot size: a multiple of 16");
  HP_CHECK_MSG(chunk_size_ % page == 0 && chunk_size_ % slot_size_ == 0,
               "chunk size: a multiple of the page and slot sizes");
  register_memory(this);
}

CodeMemory::~CodeMemory() {
  unregister_memory(this);
  MutexLock lock(mu_);
  for (Chunk& c : chunks_) {
    munmap(reinterpret_cast<void*>(c.exec), chunk_size_);
    munmap(c.write, chunk_size_);
  }
}

bool CodeMemory::slot_in_reach(const Chunk& c, std::uint32_t index, std::uint64_t near) const {
  const std::uint64_t lo = c.exec + std::uint64_t{index} * slot_size_;
  const std::uint64_t hi = lo + slot_size_;
  const auto reach = static_cast<std::uint64_t>(kCodeReach);
  return distance(lo, near) <= reach && distance(hi, near) <= reach;
}

Result<std::uint32_t> CodeMemory::map_chunk_near(std::uint64_t near) {
  for (std::uint64_t at : candidates(near, chunk_size_)) {
    Chunk c;
    const int fd = make_memfd(chunk_size_, nullptr);
    if (fd < 0) return sys_error("memfd_create for trampoline memory");
    const bool mapped = map_views(fd, at, chunk_size_, /*replace=*/false, c.write);
    const int err = errno;
    close(fd);
    if (!mapped) {
      if (err == EEXIST || err == EPERM || err == ENOMEM) continue;
      return sys_error("mapping trampoline memory", err);
    }
    c.exec = at;
    c.used.assign(chunk_size_ / slot_size_, false);
    chunks_.push_back(std::move(c));
    return static_cast<std::uint32_t>(chunks_.size() - 1);
  }
  char buf[96];
  std::snprintf(buf, sizeof buf, "no free address range within +-2 GiB of 0x%" PRIx64, near);
  return Error(Errc::no_memory_in_reach, buf);
}

// A batch of 10,000 trampolines writes 7.5 MiB of fresh pages one slot after the other:
// populating 64 KiB at a time costs less than a page fault per page, and a chunk with few
// slots used stays mostly unpopulated (no RSS for a 2 MiB chunk that holds one probe).
void CodeMemory::populate_through(Chunk& c, std::uint32_t end) const {
  constexpr std::uint32_t kStep = 64 * 1024;
  if (end <= c.populated) return;
  const std::uint32_t to = std::min(chunk_size_, (end + kStep - 1) / kStep * kStep);
#ifdef MADV_POPULATE_WRITE
  // Best effort (Linux 5.14+): a page that is not populated now faults in at write().
  (void)madvise(c.write + c.populated, to - c.populated, MADV_POPULATE_WRITE);
#endif
  c.populated = to;
}

bool slot_reaches(const CodeSlot& slot, std::uint64_t address) {
  const auto reach = static_cast<std::uint64_t>(kCodeReach);
  return distance(slot.address, address) <= reach &&
         distance(slot.address + slot.size, address) <= reach;
}

std::optional<CodeSlot> CodeMemory::take_slot(std::uint32_t ci, std::uint64_t near) {
  Chunk& c = chunks_[ci];
  if (c.used_count == c.used.size()) return std::nullopt;
  // Every slot below first_free is used: a batch of 10,000 allocations stays linear.
  for (std::uint32_t i = c.first_free; i < c.used.size(); ++i) {
    if (!c.used[i] && slot_in_reach(c, i, near)) {
      c.used[i] = true;
      ++c.used_count;
      populate_through(c, (i + 1) * slot_size_);
      while (c.first_free < c.used.size() && c.used[c.first_free])
        ++c.first_free;
      return CodeSlot{c.exec + std::uint64_t{i} * slot_size_,
                      slot_size_,
                      ci,
                      i,
                      c.write + std::uint64_t{i} * slot_size_,
                      fork_generation_.load(std::memory_order_relaxed)};
    }
  }
  return std::nullopt;
}

Result<CodeSlot> CodeMemory::allocate(std::uint64_t near) {
  MutexLock lock(mu_);
  return allocate_locked(near);
}

std::vector<Result<CodeSlot>> CodeMemory::allocate_many(std::span<const std::uint64_t> near) {
  std::vector<Result<CodeSlot>> out;
  out.reserve(near.size());
  MutexLock lock(mu_);
  for (std::uint64_t n : near)
    out.push_back(allocate_locked(n));
  return out;
}

Result<CodeSlot> CodeMemory::allocate_locked(std::uint64_t near) {
  for (std::uint32_t ci = 0; ci < chunks_.size(); ++ci) {
    if (auto s = take_slot(ci, near)) return *s;
  }
  auto ci = map_chunk_near(near);
  if (!ci.ok()) return ci.error();
  if (auto s = take_slot(ci.value(), near)) return *s;
  return Error(Errc::internal, "a fresh trampoline chunk had no slot in reach");
}

Result<void> CodeMemory::write(const CodeSlot& slot, std::span<const std::uint8_t> code) {
  if (code.size() > slot.size) {
    return Error(Errc::invalid_argument, "trampoline of " + std::to_string(code.size()) +
                                             " bytes does not fit a " + std::to_string(slot.size) +
                                             "-byte slot");
  }
  const auto copy = [&](std::uint8_t* dst) {
    std::memcpy(dst, code.data(), code.size());
    // Fill the rest with int3 so a stray jump traps.
    std::memset(dst + code.size(), 0xcc, slot.size - code.size());
  };
  if (slot.writable && slot.fork_generation == fork_generation_.load(std::memory_order_relaxed)) {
    copy(slot.writable);
    return {};
  }
  // A slot from before a fork, in the child (whose writable views were remapped).
  MutexLock lock(mu_);
  HP_CHECK(slot.chunk < chunks_.size() && chunks_[slot.chunk].used[slot.index]);
  copy(chunks_[slot.chunk].write + std::uint64_t{slot.index} * slot_size_);
  return {};
}

Result<void> CodeMemory::write_at(const CodeSlot& slot, std::uint32_t offset,
                                  std::span<const std::uint8_t> bytes) {
  if (offset > slot.size || bytes.size() > slot.size - offset) {
    return Error(Errc::invalid_argument, "write past the end of a trampoline slot");
  }
  MutexLock lock(mu_);
  HP_CHECK(slot.chunk < chunks_.size() && chunks_[slot.chunk].used[slot.index]);
  std::uint8_t* dst = chunks_[slot.chunk].write + std::uint64_t{slot.index} * slot_size_ + offset;
  std::memcpy(dst, bytes.data(), bytes.size());
  return {};
}

void CodeMemory::free_locked(const CodeSlot& slot) {
  HP_CHECK(slot.chunk < chunks_.size());
  Chunk& c = chunks_[slot.chunk];
  HP_CHECK_MSG(c.used[slot.index], "double free of a trampoline slot");
  c.used[slot.index] = false;
  --c.used_count;
  c.first_free = std::min(c.first_free, slot.index);
  std::memset(c.write + std::uint64_t{slot.index} * slot_size_, 0xcc,
              std::min(slot_size_, kPoisonBytes));
}

void CodeMemory::free(const CodeSlot& slot) {
  MutexLock lock(mu_);
  free_locked(slot);
}

void CodeMemory::free_many(std::span<const CodeSlot> slots) {
  MutexLock lock(mu_);
  for (const CodeSlot& slot : slots)
    free_locked(slot);
}

std::size_t CodeMemory::chunk_count() const {
  MutexLock lock(mu_);
  return chunks_.size();
}

std::size_t CodeMemory::used_slots() const {
  MutexLock lock(mu_);
  std::size_t n = 0;
  for (const Chunk& c : chunks_)
    n += c.used_count;
  return n;
}

// Before fork(), with every slot change locked out: snapshot each chunk into a new memfd
// for the child. Copying in the child instead would race with the parent reusing a slot
// right after fork() returns, since the old pages stay shared.
void CodeMemory::lock_for_fork() {
  mu_.lock();
  for (Chunk& c : chunks_)
    c.fork_fd = make_memfd(chunk_size_, c.write);
}

void CodeMemory::unlock_after_fork(bool in_child) {
  if (in_child) {
    remap_private_copy();
    fork_generation_.fetch_add(1, std::memory_order_relaxed);  // the child is one thread now
  }
  for (Chunk& c : chunks_) {
    if (c.fork_fd >= 0) close(c.fork_fd);
    c.fork_fd = -1;
  }
  mu_.unlock();
}

// In the child of fork(), where this is the only thread: put the snapshot at the same
// executable address and drop the writable view shared with the parent.
void CodeMemory::remap_private_copy() {
  for (Chunk& c : chunks_) {
    std::uint8_t* write = nullptr;
    HP_CHECK_MSG(c.fork_fd >= 0 && map_views(c.fork_fd, c.exec, chunk_size_, true, write),
                 "cannot give the fork child its own trampoline memory");
    munmap(c.write, chunk_size_);
    c.write = write;
  }
}

}  // namespace hp::arch
