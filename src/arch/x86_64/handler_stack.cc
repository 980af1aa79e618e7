#include "arch/x86_64/handler_stack.h"

#include <pthread.h>
#include <sys/mman.h>

#include "base/compiler.h"

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
pthread_key_t g_stack_key;
bool g_stack_key_ok = false;

// Thread exit (a pthread key's destructor): unmaps the calling thread's handler stack. A
// later hit of the same thread (another key's destructor) allocates again and sets the
// key again, which glibc runs destructors for again (PTHREAD_DESTRUCTOR_ITERATIONS).
void free_handler_stack(void* base) {
  HandlerStack& hs = tls_handler_stack;
  if (hs.base != reinterpret_cast<std::uint64_t>(base) || hs.next == 0) return;  // in use
  hs.next = 0;
  hs.base = 0;
  munmap(static_cast<char*>(base) - kGuard, kHandlerStackSize + kGuard);
}

// Made at load time: a first hit may come from a signal handler, where pthread_once is
// not safe. Without a key (none left), stacks of exited threads are not unmapped.
__attribute__((constructor)) void make_handler_stack_key() {
  g_stack_key_ok = pthread_key_create(&g_stack_key, free_handler_stack) == 0;
}

// The calling thread's handler stack, allocated: mmap with a guard page below (a handler
// that overflows it faults there instead of writing into other memory).
HP_COLD bool allocate_handler_stack(HandlerStack& hs) {
  hs.allocating = 1;  // a signal's hit meanwhile stays on its own stack
  void* m = mmap(nullptr, kHandlerStackSize + kGuard, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (m == MAP_FAILED) {
    hs.allocating = 2;  // not again: every hit would try
    return false;
  }
  (void)mprotect(m, kGuard, PROT_NONE);
  char* base = static_cast<char*>(m) + kGuard;
  if (g_stack_key_ok) (void)pthread_setspecific(g_stack_key, base);
  hs.base = reinterpret_cast<std::uint64_t>(base);
  hs.next = hs.base + kHandlerStackSize;
  hs.allocating = 0;
  return true;
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
  if (HP_UNLIKELY(hs.base == 0 && hs.allocating == 0)) (void)hp::arch::allocate_handler_stack(hs);
  if (HP_LIKELY(hs.next != 0)) return hp_handler_stack_switch(context, regs, fn, &hs.next);
  // In use (a signal's hit while the thread runs a handler: the dispatcher counts a
  // recursion miss), or no memory: here, on the current stack.
  return reinterpret_cast<std::uint64_t (*)(void*, void*)>(fn)(context, regs);
}
