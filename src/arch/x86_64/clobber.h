// Which registers a handler may change: the clean-call analysis of binary instrumenters
// (DynamoRIO's "clean call optimization" decodes the callee and saves only what it
// writes), reduced to the one question that costs the hot path: vector registers.
//
// A trampoline that saves xmm0-15 around every hit pays 16 stores and 16 loads (about
// 3 ns here on an entry hit, 6 ns on a return). Most handlers never touch a vector
// register: counting, storing a timestamp, bumping a per-thread slot. The engine asks this
// analysis about each handler and saves the vector registers only around consumers whose
// code may write one.
//
// The answer is conservative: anything the walk cannot see through counts as "may write".
// The walk starts at the function's first byte and follows every path: both sides of a
// conditional branch, direct jumps, and direct calls (the callee is walked too, because
// the System V ABI lets it clobber every vector register). It stops a path at ret, ud2,
// hlt and int3. It answers "may write" on:
//  - an instruction with an x87, MMX, XMM, YMM, ZMM, mask or tile register operand
//    (explicit or implicit), or from the x87/MMX/SSE/AVX/XSAVE families (vzeroupper,
//    fxrstor, ldmxcsr, emms...);
//  - an indirect jump or call (a PLT stub is one: a call into another library), far
//    transfers, xbegin;
//  - bytes that cannot be read or decoded;
//  - a walk longer than the budget (4,096 instructions).
// So a handler that calls into libc, or is compiled with sanitizers (calls into their
// runtime through the PLT), gets the vector registers saved.
//
// Reads code through process_vm_readv on the process itself, so an address that is not
// mapped gives "may write", never a fault (and so does every handler in a process whose
// seccomp filter refuses that system call: the saves are then always made).
#pragma once

#include <cstdint>

namespace hp::arch {

// Whether the code reachable from `function` may write a vector register (see above).
// `function` is an address in this process. Not async-signal-safe (allocates).
// The answer is cached per address until forget_vector_register_walks(), which the engine
// calls when a module is unloaded (its addresses may then hold other code).
bool may_write_vector_registers(std::uint64_t function) noexcept;
void forget_vector_register_walks() noexcept;

}  // namespace hp::arch
