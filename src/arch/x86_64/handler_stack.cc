#include "arch/x86_64/handler_stack.h"

#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <new>

#include "base/compiler.h"
#include "base/raw_syscall.h"

// The handler stack's switch outside a trampoline (hp_handler_stack_call() below, for a
// thread's first hit and for code that is not a trampoline): the same protocol as the
// trampolines' (handler_stack.h). rdi, rsi = the arguments of fn (rdx); rcx =
// &HandlerStack::next, nonzero. In the dispatch section: a thread preempted here is about
// to return into a trampoline.
// clang-format off
asm(R"(
  .pushsection hp_dispatch, "ax", @progbits
  .globl hp_handler_stack_switch
  .hidden hp_handler_stack_switch
  .type hp_handler_stack_switch, @function
hp_handler_stack_switch:
  .cfi_startproc
  pushq   %rbx
  .cfi_adjust_cfa_offset 8
  .cfi_rel_offset %rbx, 0
  pushq   %r12
  .cfi_adjust_cfa_offset 8
  .cfi_rel_offset %r12, 0
  movq    %rsp, %rbx                  # the way back
  .cfi_def_cfa_register %rbx
  movq    %rcx, %r12
  movq    (%rcx), %rax
  movq    $0, (%rcx)                  # in use: a nested switch (a signal) stays where it is
  movq    %rax, %rsp
  call    *%rdx
  movq    %rsp, %rcx                  # leave the stack before giving it back (a signal
  movq    %rbx, %rsp                  # between the two would otherwise run on it)
  .cfi_def_cfa_register %rsp
  movq    %rcx, (%r12)
  popq    %r12
  .cfi_adjust_cfa_offset -8
  popq    %rbx
  .cfi_adjust_cfa_offset -8
  ret
  .cfi_endproc
  .size hp_handler_stack_switch, . - hp_handler_stack_switch
  .popsection
)");
// clang-format on

extern "C" std::uint64_t hp_handler_stack_switch(void* context, void* regs, std::uint64_t fn,
                                                 std::uint64_t* next);

namespace hp::arch {

constinit thread_local HandlerStack tls_handler_stack
    __attribute__((tls_model("initial-exec"))) = {};

namespace {

constexpr std::size_t kGuard = 4096;
constexpr std::size_t kMapSize = kHandlerStackSize + kGuard;
pthread_key_t g_stack_key;
bool g_stack_key_ok = false;

// The table of handler stacks: one slot per mapped stack, with the tid of the thread that
// owns it (0: free, no mapping). Slots live in pages that are mapped on demand and never
// unmapped, linked through `next_page`; a signal handler may allocate, so there is no
// lock: a slot is taken with a compare-and-swap of its owner word. The word holds a
// generation beside the tid, which every taking of the slot raises: a scan that found the
// owner gone cannot free the slot after another thread took it (pid_max may be 32768, and
// a program that churns threads reuses a tid within seconds).
constexpr std::uint64_t owner_word(std::uint64_t gen, pid_t tid) {
  return gen << 32 | static_cast<std::uint32_t>(tid);
}
constexpr pid_t tid_of(std::uint64_t w) {
  return static_cast<pid_t>(static_cast<std::uint32_t>(w));
}
constexpr std::uint64_t gen_of(std::uint64_t w) {
  return w >> 32;
}
constexpr pid_t kReclaiming = -1;
struct Slot {
  std::atomic<std::uint64_t> owner{0};  // owner_word(generation, tid); tid 0: free
  std::atomic<std::uint64_t> map{0};    // the mapping (guard page first); 0 none
};
struct SlotPage {
  static constexpr std::size_t kSlots = (4096 - 2 * sizeof(void*)) / sizeof(Slot);
  SlotPage* next_page = nullptr;
  Slot slots[kSlots];
};
static_assert(sizeof(SlotPage) <= 4096);
std::atomic<SlotPage*> g_pages{nullptr};

HP_DISPATCH_SECTION void release_slot(Slot& sl) noexcept {
  sl.owner.store(owner_word(gen_of(sl.owner.load(std::memory_order_relaxed)), 0),
                 std::memory_order_release);
}
// Where the scan for stacks of exited threads goes on: a few slots per allocation.
std::atomic<std::size_t> g_scan_cursor{0};
constexpr std::size_t kScanPerAllocation = 4;

// The allocation runs between a trampoline and the dispatcher's read section: what it
// calls is in the dispatch section, with system calls made directly (base/raw_syscall.h),
// so that the trampoline reclaimer finds a thread preempted in it by its pc.
HP_DISPATCH_SECTION pid_t current_tid() noexcept {
  return static_cast<pid_t>(raw_syscall(SYS_gettid));
}

// Thread `tid` of this process no longer exists (signal 0 says so).
HP_DISPATCH_SECTION bool thread_gone(pid_t tid) noexcept {
  return raw_syscall(SYS_tgkill, raw_syscall(SYS_getpid), tid, 0) == -ESRCH;
}

HP_DISPATCH_SECTION void* map_anonymous(std::size_t size, int flags) noexcept {
  const long m = raw_syscall(SYS_mmap, 0, static_cast<long>(size), PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0);
  return m < 0 && m > -4096 ? MAP_FAILED : reinterpret_cast<void*>(m);
}

HP_DISPATCH_SECTION void unmap(void* at, std::size_t size) noexcept {
  (void)raw_syscall(SYS_munmap, reinterpret_cast<long>(at), static_cast<long>(size));
}

HP_DISPATCH_SECTION Slot* slot_at(std::size_t i) noexcept {
  for (SlotPage* p = g_pages.load(std::memory_order_acquire); p; p = p->next_page) {
    if (i < SlotPage::kSlots) return &p->slots[i];
    i -= SlotPage::kSlots;
  }
  return nullptr;
}

// A slot for `tid`: a free one, else a new page's. Null when no page can be mapped.
HP_DISPATCH_SECTION Slot* take_free_slot(pid_t tid) noexcept {
  for (;;) {
    SlotPage* head = g_pages.load(std::memory_order_acquire);
    for (SlotPage* p = head; p; p = p->next_page) {
      for (Slot& sl : p->slots) {
        std::uint64_t w = sl.owner.load(std::memory_order_relaxed);
        if (tid_of(w) == 0 && sl.owner.compare_exchange_strong(w, owner_word(gen_of(w) + 1, tid),
                                                               std::memory_order_acquire)) {
          return &sl;
        }
      }
    }
    void* m = map_anonymous(sizeof(SlotPage), 0);
    if (m == MAP_FAILED) return nullptr;
    auto* page = new (m) SlotPage;
    page->slots[0].owner.store(owner_word(1, tid), std::memory_order_relaxed);
    page->next_page = head;
    if (g_pages.compare_exchange_strong(head, page, std::memory_order_acq_rel)) {
      return &page->slots[0];
    }
    unmap(m, sizeof(SlotPage));  // another thread added a page first: look again
  }
}

// Stacks of threads that exited without their key destructor freeing them (their first hit
// came after it): the next few slots in turn, each unmapped and freed when its owner is
// gone. A tid reused by a new thread keeps its slot until that thread is gone too.
HP_DISPATCH_SECTION void reclaim_some(pid_t self) noexcept {
  for (std::size_t k = 0; k < kScanPerAllocation; k++) {
    std::size_t i = g_scan_cursor.fetch_add(1, std::memory_order_relaxed);
    Slot* sl = slot_at(i);
    if (!sl) {
      g_scan_cursor.store(0, std::memory_order_relaxed);
      sl = slot_at(0);
      if (!sl) return;
    }
    std::uint64_t w = sl->owner.load(std::memory_order_acquire);
    const pid_t owner = tid_of(w);
    if (owner <= 0 || owner == self || !thread_gone(owner)) continue;
    if (!sl->owner.compare_exchange_strong(w, owner_word(gen_of(w), kReclaiming),
                                           std::memory_order_acquire)) {
      continue;  // taken again (a new generation) or freed meanwhile
    }
    if (const std::uint64_t m = sl->map.exchange(0, std::memory_order_relaxed)) {
      unmap(reinterpret_cast<void*>(m), kMapSize);
    }
    release_slot(*sl);
  }
}

// Thread exit (a pthread key's destructor): unmaps the calling thread's handler stack and
// marks the thread exited, so that no later hit of it (a key destructor that runs after
// this one, or glibc's own freeing after them all) maps another that nothing would free.
void free_handler_stack(void* slot) {
  HandlerStack& hs = tls_handler_stack;
  if (hs.slot != slot || hs.next == 0) return;  // in use
  hs.next = 0;
  hs.base = 0;
  hs.slot = nullptr;
  hs.allocating = kStackExited;
  auto* sl = static_cast<Slot*>(slot);
  if (const std::uint64_t m = sl->map.exchange(0, std::memory_order_relaxed)) {
    munmap(reinterpret_cast<void*>(m), kMapSize);
  }
  release_slot(*sl);
}

// Made at load time: a first hit may come from a signal handler, where pthread_once is
// not safe. Without a key (none left), stacks of exited threads are freed by the scan only.
// A fork child's thread has a tid of its own: its stack's slot takes it, or the scan would
// find the parent's tid gone there and unmap the stack under it. The parent's other
// threads do not exist in the child: the scan frees their copies.
void own_stack_in_child() {
  if (auto* sl = static_cast<Slot*>(tls_handler_stack.slot)) {
    const std::uint64_t w = sl->owner.load(std::memory_order_relaxed);
    sl->owner.store(owner_word(gen_of(w) + 1, current_tid()), std::memory_order_release);
  }
}

__attribute__((constructor)) void make_handler_stack_key() {
  g_stack_key_ok = pthread_key_create(&g_stack_key, free_handler_stack) == 0;
  (void)pthread_atfork(nullptr, nullptr, &own_stack_in_child);
}

// The calling thread's handler stack, allocated: mmap with a guard page below (a handler
// that overflows it faults there instead of writing into other memory).
HP_COLD HP_DISPATCH_SECTION bool allocate_handler_stack(HandlerStack& hs) {
  hs.allocating = kStackAllocating;  // a signal's hit meanwhile stays on its own stack
  const pid_t tid = current_tid();
  Slot* sl = take_free_slot(tid);
  void* m = sl ? map_anonymous(kMapSize, MAP_NORESERVE | MAP_STACK) : MAP_FAILED;
  if (m == MAP_FAILED) {
    if (sl) release_slot(*sl);
    hs.allocating = kStackFailed;  // not again: every hit would try
    return false;
  }
  (void)raw_syscall(SYS_mprotect, reinterpret_cast<long>(m), kGuard, PROT_NONE);
  sl->map.store(reinterpret_cast<std::uint64_t>(m), std::memory_order_relaxed);
  char* base = static_cast<char*>(m) + kGuard;
  if (g_stack_key_ok) (void)pthread_setspecific(g_stack_key, sl);
  hs.slot = sl;
  hs.base = reinterpret_cast<std::uint64_t>(base);
  hs.next = hs.base + kHandlerStackSize;
  hs.allocating = 0;
  return true;
}

// The first call on a new handler stack: the scan for stacks of exited threads runs there,
// not on the program's stack, which may be a signal handler's small sigaltstack with a
// trap's frame already on it.
struct FirstCall {
  void* context;
  void* regs;
  std::uint64_t fn;
};
HP_DISPATCH_SECTION std::uint64_t first_call(void* first, void* /*unused*/) {
  const auto* f = static_cast<const FirstCall*>(first);
  reclaim_some(current_tid());
  return reinterpret_cast<std::uint64_t (*)(void*, void*)>(f->fn)(f->context, f->regs);
}

}  // namespace

std::int32_t handler_stack_tls() noexcept {
  std::uintptr_t tp;
  __asm__("mov %%fs:0, %0" : "=r"(tp));
  return static_cast<std::int32_t>(reinterpret_cast<std::intptr_t>(&tls_handler_stack.next) -
                                   static_cast<std::intptr_t>(tp));
}

HandlerStackBounds handler_stack_bounds() noexcept {
  const HandlerStack& hs = tls_handler_stack;
  return {hs.base, hs.base ? hs.base + kHandlerStackSize : 0};
}

}  // namespace hp::arch

extern "C" HP_DISPATCH_SECTION std::uint64_t hp_handler_stack_call(void* context, void* regs,
                                                                   std::uint64_t fn) {
  hp::arch::HandlerStack& hs = hp::arch::tls_handler_stack;
  if (HP_UNLIKELY(hs.base == 0 && hs.allocating == 0) && hp::arch::allocate_handler_stack(hs)) {
    hp::arch::FirstCall first{context, regs, fn};
    return hp_handler_stack_switch(
        &first, nullptr, reinterpret_cast<std::uint64_t>(&hp::arch::first_call), &hs.next);
  }
  if (HP_LIKELY(hs.next != 0)) return hp_handler_stack_switch(context, regs, fn, &hs.next);
  // In use (a signal's hit while the thread runs a handler: the dispatcher counts a
  // recursion miss), or no memory: here, on the current stack.
  return reinterpret_cast<std::uint64_t (*)(void*, void*)>(fn)(context, regs);
}
