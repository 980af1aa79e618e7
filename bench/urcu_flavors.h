// liburcu (userspace-rcu 0.13) flavours as bench adapters, with the inline read side that
// LGPL users get from _LGPL_SOURCE.
//
// Several flavours in one program: every flavour's symbols are prefixed (urcu_memb_*,
// urcu_mb_*, urcu_qsbr_*, urcu_bp_*), and urcu/<flavour>.h maps the generic rcu_* names onto
// its prefix through urcu/map/<flavour>.h only when URCU_API_MAP is defined; otherwise it
// ends with urcu/map/clear.h, which undefines the generic names again. So including the four
// headers in one translation unit works as long as URCU_API_MAP stays undefined and we call
// the prefixed names. The libraries (liburcu-memb, -mb, -qsbr, -bp, plus liburcu-common for
// the shared futex/queue helpers) link side by side without clashes.
//
// Include this header last: liburcu still defines a few generic macros (rcu_assign_pointer,
// the *_memb/_mb/... compatibility aliases) that must not rewrite our own headers.
#pragma once

#ifndef _LGPL_SOURCE
#define _LGPL_SOURCE 1
#endif
#ifdef URCU_API_MAP
#error "sync_bench calls the flavour-prefixed liburcu names; do not define URCU_API_MAP"
#endif
// liburcu declares its per-thread reader state with C++11 `thread_local` when compiled as
// C++ (urcu/tls-compat.h). For an `extern thread_local`, g++ must assume a dynamic
// initializer in another translation unit and goes through a TLS wrapper function, which
// adds a test and branch to every access (five per read pair). C users get plain __thread
// access; so do we, by spelling the storage class __thread while the liburcu headers are
// read (only their declarations see the macro; the system headers are already included).
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>
#pragma push_macro("thread_local")
#define thread_local __thread
#include <urcu/urcu-bp.h>
#include <urcu/urcu-mb.h>
#include <urcu/urcu-memb.h>
#include <urcu/urcu-qsbr.h>
#pragma pop_macro("thread_local")

namespace hp::bench {

// Adapter shape shared by every flavour in sync_bench.cc: lock()/unlock(token) around the
// read-side section, thread_online()/thread_offline() around a reader thread's life,
// quiescent() once per block of reads (only qsbr needs it), synchronize().
struct UrcuMemb {
  struct Token {};
  static constexpr const char* kName = "urcu-memb";
  __attribute__((always_inline)) Token lock() noexcept {
    urcu_memb_read_lock();
    return {};
  }
  __attribute__((always_inline)) void unlock(Token) noexcept { urcu_memb_read_unlock(); }
  void quiescent() noexcept {}
  void thread_online() { urcu_memb_register_thread(); }
  void thread_offline() { urcu_memb_unregister_thread(); }
  void synchronize() { urcu_memb_synchronize_rcu(); }
};

struct UrcuMb {
  struct Token {};
  static constexpr const char* kName = "urcu-mb";
  __attribute__((always_inline)) Token lock() noexcept {
    urcu_mb_read_lock();
    return {};
  }
  __attribute__((always_inline)) void unlock(Token) noexcept { urcu_mb_read_unlock(); }
  void quiescent() noexcept {}
  void thread_online() { urcu_mb_register_thread(); }
  void thread_offline() { urcu_mb_unregister_thread(); }
  void synchronize() { urcu_mb_synchronize_rcu(); }
};

// QSBR: the read side is empty; instead each registered thread must announce quiescent
// states. Like liburcu's own tests/benchmark/test_urcu_qsbr.c, readers announce one after
// every block of reads (sync_bench.cc: kBlock = 1024), inside the timed loop.
struct UrcuQsbr {
  struct Token {};
  static constexpr const char* kName = "urcu-qsbr";
  __attribute__((always_inline)) Token lock() noexcept {
    urcu_qsbr_read_lock();
    return {};
  }
  __attribute__((always_inline)) void unlock(Token) noexcept { urcu_qsbr_read_unlock(); }
  void quiescent() noexcept { urcu_qsbr_quiescent_state(); }
  void thread_online() { urcu_qsbr_register_thread(); }
  void thread_offline() { urcu_qsbr_unregister_thread(); }
  // Only unregistered (or offline) threads may call this; the bench's writer never registers.
  void synchronize() { urcu_qsbr_synchronize_rcu(); }
};

// bp ("bulletproof"): registers lazily on the first read lock; we register up front so the
// registration stays out of the timed loop.
struct UrcuBp {
  struct Token {};
  static constexpr const char* kName = "urcu-bp";
  __attribute__((always_inline)) Token lock() noexcept {
    urcu_bp_read_lock();
    return {};
  }
  __attribute__((always_inline)) void unlock(Token) noexcept { urcu_bp_read_unlock(); }
  void quiescent() noexcept {}
  void thread_online() { urcu_bp_register_thread(); }
  void thread_offline() { urcu_bp_unregister_thread(); }
  void synchronize() { urcu_bp_synchronize_rcu(); }
};

}  // namespace hp::bench
