// Compiler helpers shared by every layer.
#pragma once

#define HP_LIKELY(x) __builtin_expect(!!(x), 1)
#define HP_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define HP_NOINLINE __attribute__((noinline))
#define HP_ALWAYS_INLINE inline __attribute__((always_inline))
// Slow paths: out of line and cold, so the reader path stays small (STYLE.md item 4).
#define HP_COLD __attribute__((noinline, cold))
#define HP_EXPORT __attribute__((visibility("default")))
// Code that runs between a trampoline and the read-side section that protects it (the
// dispatcher's head and tail, the SIGTRAP path): kept in one section, so the trampoline
// reclaimer can tell a thread preempted there (and about to return into a trampoline)
// by its pc alone. __start_hp_dispatch / __stop_hp_dispatch bound it.
#define HP_DISPATCH_SECTION __attribute__((section("hp_dispatch")))

namespace hp {
// One cache line; used to keep per-thread and per-CPU data from sharing lines.
inline constexpr unsigned kCacheLine = 64;
}  // namespace hp
