// Threads that hotprobe starts inside a traced program.
#pragma once

#include <pthread.h>

#include <cstddef>

namespace hp {

// The stack of every thread of hotprobe's in a traced program: explicit, never the
// default (RLIMIT_STACK's, which a program run under `ulimit -s 24` makes 24 KiB, too small
// for reading a /proc file). Sanitizers need more.
#if defined(HOTPROBE_ASAN) || defined(HOTPROBE_TSAN)
inline constexpr std::size_t kOwnThreadStack = std::size_t{1} << 20;
#else
inline constexpr std::size_t kOwnThreadStack = std::size_t{256} << 10;
#endif

struct OwnThreadOptions {
  bool detached = false;
  // Started with every asynchronous signal blocked (hp::fill_async_signals): no handler of
  // the program runs on it. The thread unblocks what it needs itself.
  bool block_async_signals = true;
};

// pthread_create with a stack of kOwnThreadStack bytes. Returns pthread_create's error
// (0: started); never throws.
int start_own_thread(pthread_t* thread, void* (*entry)(void*), void* arg,
                     OwnThreadOptions options = {}) noexcept;

}  // namespace hp
