// The engine's trampolines: entry trampolines (from a labelled template per kind of site,
// EntryTrampolineBuilder) and return trampolines, made of arch's pieces
// (arch/x86_64/frame.h) and core's fast-path templates (templates.h). Pure functions of
// their inputs: bytes for a given address; nothing here writes live code.
//
// Entry trampoline (site rsp = S; every offset below is from S):
//
//     lea   rsp, [rsp-128]           skip the red zone; lea leaves flags alone
//     push  rax                      [S-136] rax
//     pushfq | push 0                [S-144] flags (push 0 when flags are not live)
//     [cld]                          only when flags are live (DF=0 for the dispatcher)
//     mov   rax, rsp                 rax = M = S-144, the way back
//     and   rsp, -16                 align (flags already saved)
//     push  rax; push rax            the way back, twice to keep 16-byte alignment
//     [lea rsp,[rsp-256]; movups [rsp+16*i], xmm_i  for i in 0..15]   save_vector only
//     lea   rsp, [rsp-144]           the hotprobe::Regs frame, 16-byte aligned
//     mov   [rsp+off(reg)], reg      rcx, rdx, ..., r15
//     rax, rflags from [M+8], [M]; rsp = M+144 = S; rip = probe address
//     movabs rdi, context; mov rsi, rsp
//     call  dispatcher               call rel32 when in reach, else movabs rax; call rax
//     restore xmm (if saved); rcx..r15, rax from the frame (handlers may change them)
//     mov   rsp, [rsp+144+vec]       rsp = M
//     popfq | lea rsp,[rsp+8]
//     lea   rsp, [rsp+136]           rsp = S
//     <relocated displaced instructions>
//     jmp   patch_address + length   (rel32, or jmp [rip+0]; .quad)
//   and, with a return landing (spec.landing_target, sites at a function's entry):
//     exit: the same restore; lea rsp, [rsp+144]     reached when the dispatcher returns
//     call  1f                                        true: it hijacked the return address
//   landing:                                          with `landing`, so the function's ret
//     jmp   landing_target                            comes here, as the return stack
//   1:  lea rsp, [rsp+8]                              buffer predicts (the call pushed it)
//     jmp   <relocated displaced instructions>
//
// The dispatcher is `bool (*)(void* context, hotprobe::Regs*)`: true when it replaced the
// function's return address with the landing (the trampoline then leaves by the exit
// above); every register is restored from the frame either way.
//
// Vector registers: with save_vector xmm0-15 are saved and restored; the upper halves of
// ymm/zmm are not (the dispatcher must not use AVX; see docs/design/arch.md). The engine
// asks for it only in ThreadSanitizer builds: elsewhere its dispatcher saves them itself,
// around the handlers that may write one (core/dispatch.h).

#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "arch/x86_64/plan.h"
#include "arch/x86_64/relocate.h"
#include "base/error.h"
#include "core/x86_64/templates.h"

namespace hp::core {

struct EntryTrampolineSpec {
  std::uint64_t address = 0;        // where the trampoline will live
  std::uint64_t context = 0;        // first argument to the dispatcher
  std::uint64_t dispatcher = 0;     // bool dispatcher(void* context, hotprobe::Regs*)
  bool save_vector = true;          // xmm0-15
  const FastEntry* fast = nullptr;  // the inline fast path, or none
  // Where the landing jumps (a return trampoline with exit_by_ret), or 0 for no landing.
  // Only for a plan at a function's entry.
  std::uint64_t landing_target = 0;
  // Run the dispatcher on the thread's handler stack (arch/x86_64/handler_stack.h).
  bool handler_stack = true;
  // A return site (core/ret_probe.h): the plan's displaced bytes end with a one-byte `ret`,
  // or right before one (the caller checked). The trampoline runs the instructions before
  // the ret first, then the dispatcher with the registers of the moment the ret would run
  // (Regs.rip = the ret's address), then a ret of its own: the return address on the stack
  // is never touched. No landing.
  //     <relocated displaced instructions but the ret>
  //     save, switch, dispatcher, switch back, restore (flags dead: a ret ends a call)
  //     ret
  // A thread moved from inside the displaced bytes lands in the copy; one at the ret
  // itself lands on the save (the map says so), so its return is not missed.
  bool run_at_ret = false;
};

struct Trampoline {
  std::vector<std::uint8_t> code;
  std::uint32_t relocated_offset = 0;  // start of the relocated displaced instructions
  std::uint32_t landing_offset = 0;    // the landing (0: none)
  // original offset (from plan.patch_address) -> offset in `code`, see arch::Relocation::map.
  std::vector<arch::OffsetPair> map;
};

Result<Trampoline> make_entry_trampoline(const EntryTrampolineSpec& spec,
                                         const arch::DisplacementPlan& plan);

// Entry trampolines for many sites (a batch): the same bytes as make_entry_trampoline(),
// copied from a template instead of emitted instruction by instruction. Sites that share
// everything but their addresses (the trampoline's, the probe's, the jump back's, the
// landing's), their context, their consumer array and their displaced instructions are of
// one kind. The first site of a kind is emitted with its fields labelled as they are
// written (arch::Fixup: a per-site value, 8 bytes or rel32, or a rel32 between two points
// of the code), as the kernel's optprobes label optprobe_template_*; its code around the
// relocated instructions is the kind's template. A later site costs a copy, its relocated
// instructions, and a pass over the labels that puts its values in (fields after the
// relocated instructions move with their length). A rel32 that would not reach, or a far
// form that would (where make_entry_trampoline() picks the other form), takes the full
// path; so does the kind's first copy that comes out different from the full build (it is
// compared once), which keeps any unlabelled field from going unnoticed.
// Not thread-safe: one builder per thread (the engine's is under its registry lock).
class EntryTrampolineBuilder {
 public:
  EntryTrampolineBuilder();
  ~EntryTrampolineBuilder();
  EntryTrampolineBuilder(const EntryTrampolineBuilder&) = delete;
  EntryTrampolineBuilder& operator=(const EntryTrampolineBuilder&) = delete;

  Result<Trampoline> build(const EntryTrampolineSpec& spec, const arch::DisplacementPlan& plan);
  // Takes back a trampoline's buffers (once its code is written), for the next build():
  // a batch then allocates none per site.
  void recycle(Trampoline&& t);

  // Trampolines copied from a template so far (tests, statistics).
  std::uint64_t from_template() const noexcept { return from_template_; }

 private:
  struct Template;
  std::vector<Template*> templates_;  // owned
  std::vector<std::uint8_t> spare_code_;
  std::vector<arch::OffsetPair> spare_map_;
  std::uint64_t from_template_ = 0;
};

// The return trampoline: the probed function's return address is replaced by its address.
// It saves every general register and xmm0-15 (rax/rdx/xmm0/xmm1 carry return values;
// the others are saved so that nothing depends on which registers the dispatcher uses),
// builds a Regs frame (rsp = the stack pointer after the ret, rip = the trampoline's own
// address), calls `uint64_t dispatcher(void* context, hotprobe::Regs*)`, which returns the
// original return address, restores every register and jumps there through the red zone
// slot [rsp-8] (a signal cannot clobber it; the kernel skips the red zone).
struct ReturnTrampolineSpec {
  std::uint64_t address = 0;
  std::uint64_t context = 0;
  std::uint64_t dispatcher = 0;
  bool save_vector = true;
  const FastReturn* fast = nullptr;
  // Leave by `ret` (the return stack buffer's top is the caller's entry: the function was
  // entered through a landing, which pushed one entry more) instead of `jmp [rsp-8]`.
  bool exit_by_ret = false;
  bool handler_stack = true;  // as EntryTrampolineSpec's
};
Result<std::vector<std::uint8_t>> make_return_trampoline(const ReturnTrampolineSpec& spec);

}  // namespace hp::core
