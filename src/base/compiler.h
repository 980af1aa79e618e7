// Compiler helpers shared by every layer.
#pragma once

#define HP_LIKELY(x) __builtin_expect(!!(x), 1)
#define HP_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define HP_NOINLINE __attribute__((noinline))
#define HP_ALWAYS_INLINE inline __attribute__((always_inline))
// Slow paths: out of line and cold, so the reader path stays small (STYLE.md item 4).
#define HP_COLD __attribute__((noinline, cold))
#define HP_EXPORT __attribute__((visibility("default")))

namespace hp {
// One cache line; used to keep per-thread and per-CPU data from sharing lines.
inline constexpr unsigned kCacheLine = 64;
}  // namespace hp
