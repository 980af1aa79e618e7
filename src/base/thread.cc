#include "base/thread.h"

#include <signal.h>

#include "base/signals.h"

namespace hp {

int start_own_thread(pthread_t* thread, void* (*entry)(void*), void* arg,
                     OwnThreadOptions options) noexcept {
  pthread_attr_t attr;
  if (int rc = pthread_attr_init(&attr); rc != 0) return rc;
  int rc = pthread_attr_setstacksize(&attr, kOwnThreadStack);
  if (rc == 0 && options.detached) rc = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  if (rc == 0) {
    sigset_t all, old;
    if (options.block_async_signals) {
      fill_async_signals(&all);
      pthread_sigmask(SIG_BLOCK, &all, &old);
    }
    rc = pthread_create(thread, &attr, entry, arg);
    if (options.block_async_signals) pthread_sigmask(SIG_SETMASK, &old, nullptr);
  }
  pthread_attr_destroy(&attr);
  return rc;
}

}  // namespace hp
