// Signal masks for hotprobe's own threads and critical sections.
#pragma once

#include <signal.h>

namespace hp {

// Every signal a thread can block without dying of it: all of them but the synchronous
// ones. The kernel delivers SIGTRAP, SIGSEGV, SIGBUS, SIGILL and SIGFPE raised by an
// instruction even when they are blocked, by resetting their action to the default
// (force_sig): a thread of hotprobe's that blocks SIGTRAP and runs into an int3 of the
// patch protocol (it calls a probed strlen or malloc in that window) would kill the
// process instead of reaching hotprobe's trap handler.
inline void fill_async_signals(sigset_t* set) noexcept {
  sigfillset(set);
  constexpr int kSynchronous[] = {SIGTRAP, SIGSEGV, SIGBUS, SIGILL, SIGFPE};
  for (int sig : kSynchronous)
    sigdelset(set, sig);
}

}  // namespace hp
