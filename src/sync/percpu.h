// CPU-level building blocks of the sync layer: fences, the process-wide membarrier, CPU
// ids, per-CPU arrays, and the per-thread counter slots the SRCU domains and the percpu
// rw-semaphore count their readers in.
//
// Overview
//  - full_fence(): smp_mb(). A `lock addl $0` on the stack (2 ns here) rather than
//    `mfence` (16 ns here, REFERENCES.md), as the kernel does on x86-64. Every caller
//    labels the fence it pairs with (STYLE.md item 1; docs/design/sync-srcu-rwsem.md).
//  - membarrier_all(): membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED), registered once per
//    process. On return, every thread of the process that was running has executed a full
//    barrier, and every thread that was not running has passed a context switch (also a
//    full barrier). Writers use it to pair with readers that have only a compiler barrier
//    (the "fast" read sides). Costs 0.35 us alone, 7-9 us with other threads running.
//  - current_cpu(): the CPU this thread runs on (a hint: it may change right after),
//    from glibc's registered rseq area (`__rseq_offset`), falling back to sched_getcpu()
//    when rseq is not registered (GLIBC_TUNABLES=glibc.pthread.rseq=0).
//  - PerCpu<T>: one cache line (or more) per possible CPU, so CPUs never share lines.
//  - percpu_add(): adds to the current CPU's counter with a restartable sequence (no
//    `lock` prefix; the kernel restarts the sequence if the thread is preempted, migrated
//    or signalled before the single committing `add`), with an atomic fallback.
//  - detail::thread_slot(id): this thread's counter slot for domain `id` (see below).
//
// Per-thread slots (what Srcu/SrcuFast/PercpuRwsem count readers in)
//  Every domain gets a small id (SlotId; freed ids are reused, smallest first). Every
//  thread has a table of ThreadSlot indexed by id, reached through one initial-exec TLS
//  variable {cap, slots}, so a reader finds its slot with two %fs-relative loads and a
//  compare. The table is a region of address space reserved at the thread's first use
//  (mmap, MAP_NORESERVE: room for 16,384 ids; the kernel supplies zeroed pages as ids
//  are used, so a thread using a few domains costs one page), and it never moves while
//  the thread lives: an SRCU token carries its slot's address, and read_unlock() is one
//  `addq` through it, with no lookup and no check (it was a table generation check and
//  a second lookup when a growing heap table could move: 1.65 ns a pair, now 1.14,
//  against tasks-trace's 0.83). Only the owning thread writes its
//  slots (one non-locked `addq`, no atomic read-modify-write); writers sum one id's
//  slots over all live threads, under the registry mutex. When a thread exits (pthread
//  key destructor, after the C++ thread_local destructors) its counts are folded into
//  each domain's `retired` counts, under the same mutex, so sums stay exact. When a
//  domain is destroyed its id is freed and every live thread's slot of that id is
//  zeroed, so the next domain that gets the id starts from zero. In a fork child the
//  other threads' tables are dropped (those threads do not exist there).
//
// Limits
//  - The TLS is initial-exec (no __tls_get_addr on the read path). A library loaded with
//    dlopen (the injected agent) takes it from glibc's static TLS surplus: about 60
//    bytes (the table pointer and the thread record).
//  - A thread that exits inside a read section leaves its domain with a reader forever
//    (its counts are folded as they are): writers of that domain then wait forever.
//  - Async-signal-safety (read sections in a signal handler, as int3 mode runs them):
//    counts are single-instruction adds, and registry work runs with signals blocked. A
//    thread's first use registers it with one mmap (a system call, async-signal-safe)
//    and no malloc, for any id.
//  - At most 16,384 domains exist at once (ids are reused); one more dies with a message.
#pragma once

#include <sched.h>
#include <sys/rseq.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <new>

#include "base/compiler.h"

namespace hp::sync {

// smp_mb(): orders every earlier load and store before every later one.
HP_ALWAYS_INLINE void full_fence() noexcept {
  // A locked add of zero to our own stack: a full barrier on x86-64, cheaper than mfence.
  // The word is below %rsp (the red zone), and adding zero leaves it unchanged.
  // ThreadSanitizer sees no fence here (g++ rejects atomic_thread_fence under TSan, and
  // TSan does not model fences anyway); every happens-before edge it needs is also a
  // release store read by an acquire load (see docs/design/sync-srcu-rwsem.md).
  asm volatile("lock addl $0, -4(%%rsp)" ::: "memory", "cc");
}

// barrier(): stops the compiler, not the CPU. Used where a membarrier_all() on the writer
// side stands in for the CPU fence.
HP_ALWAYS_INLINE void compiler_barrier() noexcept {
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

// membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED): a full barrier on every running thread of
// this process (see the overview). Dies with a message if the kernel refuses it.
HP_COLD void membarrier_all();

// Number of possible CPUs (highest possible CPU id + 1), from
// /sys/devices/system/cpu/possible, or get_nprocs_conf().
unsigned possible_cpus() noexcept;

// True if glibc registered rseq for this thread (the cpu_id field is valid).
bool rseq_available() noexcept;

namespace detail {
HP_COLD unsigned current_cpu_slow() noexcept;

// glibc's rseq area of this thread: thread pointer + __rseq_offset.
HP_ALWAYS_INLINE const volatile struct rseq* rseq_area() noexcept {
  return reinterpret_cast<const volatile struct rseq*>(
      static_cast<char*>(__builtin_thread_pointer()) + __rseq_offset);
}
}  // namespace detail

// The CPU this thread is running on (may change immediately after). Always < possible_cpus().
HP_ALWAYS_INLINE unsigned current_cpu() noexcept {
  if (HP_LIKELY(__rseq_size != 0)) {
    std::int32_t cpu = static_cast<std::int32_t>(detail::rseq_area()->cpu_id);
    if (HP_LIKELY(cpu >= 0)) return static_cast<unsigned>(cpu);
  }
  return detail::current_cpu_slow();
}

// One T per possible CPU, each on its own cache line(s).
template <class T>
class PerCpu {
 public:
  PerCpu() : n_(possible_cpus()), v_(new Padded[n_]) {}
  ~PerCpu() { delete[] v_; }
  PerCpu(const PerCpu&) = delete;
  PerCpu& operator=(const PerCpu&) = delete;

  unsigned size() const noexcept { return n_; }
  T& operator[](unsigned cpu) noexcept { return v_[cpu].v; }
  const T& operator[](unsigned cpu) const noexcept { return v_[cpu].v; }
  T& local() noexcept { return v_[current_cpu()].v; }
  // For rseq adds: address of CPU 0's element and the distance between CPUs.
  T* base() noexcept { return &v_[0].v; }
  static constexpr std::size_t stride() noexcept { return sizeof(Padded); }

 private:
  struct alignas(kCacheLine) Padded {
    T v{};
  };
  unsigned n_;
  Padded* v_;
};

using PerCpuCounter = PerCpu<std::atomic<std::int64_t>>;

namespace detail {
HP_COLD void percpu_add_slow(PerCpuCounter& counters, std::int64_t delta) noexcept;
}  // namespace detail

// Adds `delta` to the current CPU's element of `counters`, never losing an update: with
// rseq, a restartable sequence whose commit is one non-locked `add`; otherwise (and under
// ThreadSanitizer, which cannot see the assembly) an atomic fetch_add on the CPU's element.
//
// The sequence: store the address of its descriptor in rseq->rseq_cs (offset 8), read
// rseq->cpu_id (offset 4), compute the element's address, `add` (the commit). If the
// kernel preempts, migrates or signals the thread between the descriptor store and the
// commit, it jumps to the abort label (preceded by glibc's signature 0x53053053, which
// the kernel checks), which starts over. The kernel clears rseq_cs on abort, hence the
// restart at the descriptor store.
HP_ALWAYS_INLINE void percpu_add(PerCpuCounter& counters, std::int64_t delta) noexcept {
#if defined(HOTPROBE_TSAN)
  detail::percpu_add_slow(counters, delta);
#else
  if (HP_UNLIKELY(__rseq_size == 0)) return detail::percpu_add_slow(counters, delta);
  char* base = reinterpret_cast<char*>(counters.base());
  asm volatile(
      ".pushsection __rseq_cs, \"aw\"\n\t"
      ".balign 32\n\t"
      "3:\n\t"
      ".long 0, 0\n\t"               // version, flags
      ".quad 1f, (2f - 1f), 4f\n\t"  // start_ip, post_commit_offset, abort_ip
      ".popsection\n\t"
      "5:\n\t"
      "leaq 3b(%%rip), %%rax\n\t"
      "movq %%rax, %%fs:8(%[off])\n\t"  // rseq->rseq_cs = &descriptor
      "1:\n\t"
      "movl %%fs:4(%[off]), %%eax\n\t"  // rseq->cpu_id
      "imulq %[stride], %%rax\n\t"
      "addq %[delta], (%[base], %%rax)\n\t"  // commit
      "2:\n\t"
      ".pushsection __rseq_failure, \"ax\"\n\t"
      ".byte 0x0f, 0xb9, 0x3d\n\t"  // ud1 <sig>(%rip), %edi: never executed
      ".long 0x53053053\n\t"        // RSEQ_SIG, checked by the kernel before abort_ip
      "4:\n\t"
      "jmp 5b\n\t"
      ".popsection\n\t"
      :
      : [off] "r"(__rseq_offset), [stride] "r"(PerCpuCounter::stride()), [delta] "r"(delta),
        [base] "r"(base)
      : "rax", "memory", "cc");
#endif
}

// Sum over all CPUs (relaxed loads).
std::int64_t percpu_sum(const PerCpu<std::atomic<std::int64_t>>& counters) noexcept;

namespace detail {

// One thread's counters for one domain. Written only by the owning thread (load + store),
// read by writers. lock[i]/unlock[i]: read sections begun/ended on counter index i.
struct alignas(32) ThreadSlot {
  std::atomic<std::uint64_t> lock[2];
  std::atomic<std::uint64_t> unlock[2];
};

// This thread's table. Zero-initialized: cap == 0 sends the first use to the slow path,
// which registers the thread with the registry (so writers see its slots).
struct SlotTable {
  std::uint32_t cap;  // ids below cap have a slot
  std::uint32_t gen;  // changes whenever `slots` changes (registration, thread exit)
  ThreadSlot* slots;
};
extern __thread SlotTable tls_slot_table __attribute__((tls_model("initial-exec")));

// Counts of exited threads, folded into the domain (guarded by the registry mutex).
// Also the domain's fork hook: run in a fork child (one thread, other threads' locks
// possibly held), under the registry mutex, so it must not touch the registry.
struct RetiredCounts {
  std::uint64_t lock[2] = {0, 0};
  std::uint64_t unlock[2] = {0, 0};
  void (*fork_child)(void* ctx) = nullptr;
  void* fork_ctx = nullptr;
};

HP_COLD ThreadSlot* thread_slot_slow(std::uint32_t id) noexcept;

HP_ALWAYS_INLINE ThreadSlot* thread_slot(std::uint32_t id) noexcept {
  if (HP_LIKELY(id < tls_slot_table.cap)) return &tls_slot_table.slots[id];
  return thread_slot_slow(id);
}
// A thread's slots: one region reserved at registration, aligned to its size, so a
// slot's address tells both whose region it is in and its domain id.
inline constexpr std::uint32_t kMaxSlotIds = 16384;
inline constexpr std::uintptr_t kRegionBytes = sizeof(ThreadSlot) * kMaxSlotIds;
static_assert((kRegionBytes & (kRegionBytes - 1)) == 0, "regions are aligned to their size");
// Whether `s` is one of this thread's slots (an SRCU token unlocked on its own thread):
// one %fs-relative load and a compare, no domain access.
HP_ALWAYS_INLINE bool slot_is_mine(const ThreadSlot* s) noexcept {
  return (reinterpret_cast<std::uintptr_t>(s) & ~(kRegionBytes - 1)) ==
         reinterpret_cast<std::uintptr_t>(tls_slot_table.slots);
}
HP_ALWAYS_INLINE std::uint32_t slot_id(const ThreadSlot* s) noexcept {
  return static_cast<std::uint32_t>((reinterpret_cast<std::uintptr_t>(s) & (kRegionBytes - 1)) /
                                    sizeof(ThreadSlot));
}

// This thread's slot if it has one (no allocation), else nullptr.
HP_ALWAYS_INLINE const ThreadSlot* thread_slot_if_present(std::uint32_t id) noexcept {
  if (id < tls_slot_table.cap) return &tls_slot_table.slots[id];
  return nullptr;
}

// Owner-only increment: no other thread writes this word, so no locked RMW is needed. One
// non-locked `addq` instruction, so that a signal handler that runs read sections on
// this thread (int3 mode) cannot interleave with it and lose a count; a load + store
// pair could. Under ThreadSanitizer (which cannot see assembly) an atomic fetch_add.
// `mo` is release for unlock counts: the asm's "memory" clobber keeps the compiler from
// sinking earlier accesses below it, and x86 stores are releases.
HP_ALWAYS_INLINE void slot_inc(std::atomic<std::uint64_t>& c, std::memory_order mo) noexcept {
#if defined(HOTPROBE_TSAN)
  c.fetch_add(1, mo);
#else
  (void)mo;
  static_assert(sizeof(std::atomic<std::uint64_t>) == sizeof(std::uint64_t));
  asm volatile("addq $1, %0" : "+m"(*reinterpret_cast<std::uint64_t*>(&c)) : : "memory", "cc");
#endif
}

// Sections this thread opened and has not closed, on indexes 0..n_idx-1 of its own slot
// (locks - unlocks). Re-reads until the lock counts are stable, so that a signal handler
// that runs a (balanced) read section between the loads cannot skew the difference.
HP_ALWAYS_INLINE std::int64_t slot_open_sections(const ThreadSlot* s, unsigned n_idx) noexcept {
  for (;;) {
    std::uint64_t l1 = 0, u = 0, l2 = 0;
    for (unsigned i = 0; i < n_idx; ++i)
      l1 += s->lock[i].load(std::memory_order_relaxed);
    compiler_barrier();
    for (unsigned i = 0; i < n_idx; ++i)
      u += s->unlock[i].load(std::memory_order_relaxed);
    compiler_barrier();
    for (unsigned i = 0; i < n_idx; ++i)
      l2 += s->lock[i].load(std::memory_order_relaxed);
    if (l1 == l2) return static_cast<std::int64_t>(l1 - u);
  }
}

// A domain's id in the slot tables, allocated on construction and freed (slots zeroed)
// on destruction.
class SlotId {
 public:
  SlotId();
  ~SlotId();
  SlotId(const SlotId&) = delete;
  SlotId& operator=(const SlotId&) = delete;
  std::uint32_t get() const noexcept { return id_; }

  // fn(ctx) runs in every fork child after the other threads' slot tables were dropped:
  // the domain reinitializes the locks that a thread that does not exist there may hold.
  void set_fork_child_hook(void (*fn)(void* ctx), void* ctx);

  // Sum of unlock[idx] (or lock[idx]) over every live thread and the retired counts,
  // taken under the registry mutex. Loads are acquire: a counted unlock makes its
  // thread's read section happen-before the caller's next steps.
  std::uint64_t sum_unlocks(unsigned idx) const noexcept { return sum_counts(idx, false); }
  std::uint64_t sum_locks(unsigned idx) const noexcept { return sum_counts(idx, true); }

 private:
  std::uint64_t sum_counts(unsigned idx, bool locks) const noexcept;
  std::uint32_t id_;
  RetiredCounts retired_;  // guarded by the registry mutex
};

// Waiting with backoff: spin briefly, then yield, then sleep up to 1 ms per round.
class Backoff {
 public:
  void wait() noexcept;

 private:
  unsigned round_ = 0;
};

}  // namespace detail
}  // namespace hp::sync
