// The read-guard concept every protection scheme implements, so the dispatcher and the
// benchmarks are instantiated once per scheme and compared in the real hot path.
//
// A domain has:
//  - read_lock()/read_unlock(token): nesting allowed, from any thread without explicit
//    registration, safe in a thread that exits while others synchronize. Inline, no
//    allocation, no system call on the fast path.
//  - synchronize(): returns after every read-side section that began before the call
//    has ended (a grace period). Never call it inside a read section of the same domain.
//  - call(cb) / retire(obj): run a callback, in a batch, after a grace period, never
//    inside the caller's read section (a worker thread runs them).
//  - barrier(): wait until every callback queued before the call has run.
//  - start_poll() / poll(cookie): polling grace periods.
//  - in_reader(): "am I inside a read section" for HP_ASSERT lifetime checks.
#pragma once

#include <concepts>
#include <cstdint>
#include <memory>

namespace hp::sync {

// What read_lock() returns and read_unlock() takes: the counter index for SRCU-style
// domains, unused by the others.
struct ReadToken {
  std::uint32_t idx = 0;
  // SRCU-style domains: the locking thread's counter slot, so read_unlock() needs no
  // lookup (a thread's slots never move while it lives). A token is unlocked on the
  // thread that locked it (ReadGuard does).
  void* slot = nullptr;
};

// A grace-period cookie from start_poll(); poll(cookie) is true once a full grace period
// has elapsed since start_poll() returned it.
struct GpCookie {
  std::uint64_t seq = 0;
};

// The intrusive deferred-callback node (the kernel's rcu_head): no allocation to retire.
struct Callback {
  Callback* next = nullptr;
  void (*fn)(Callback*) = nullptr;
};

template <class D>
concept ReadDomain = requires(D& d, ReadToken t) {
  { d.read_lock() }
  noexcept->std::same_as<ReadToken>;
  { d.read_unlock(t) }
  noexcept;
  { d.in_reader() }
  noexcept->std::same_as<bool>;
  d.synchronize();
};

template <class D>
concept ReclaimingDomain = ReadDomain<D> && requires(D& d, Callback* cb, GpCookie c) {
  d.call(cb);
  d.barrier();
  { d.start_poll() } -> std::same_as<GpCookie>;
  { d.poll(c) } -> std::same_as<bool>;
};

// Scoped read-side section.
template <ReadDomain D>
class [[nodiscard]] ReadGuard {
 public:
  explicit ReadGuard(D& d) noexcept : d_(d), t_(d.read_lock()) {}
  ~ReadGuard() { d_.read_unlock(t_); }
  ReadGuard(const ReadGuard&) = delete;
  ReadGuard& operator=(const ReadGuard&) = delete;

 private:
  D& d_;
  ReadToken t_;
};

}  // namespace hp::sync

namespace hp::sync {

// retire(domain, p [, deleter]): free p after a grace period of domain. Allocates a small
// node; objects that embed a Callback (rcu_obj_base) retire without allocating.
template <class D, class T, class Deleter = std::default_delete<T>>
requires ReclaimingDomain<D>
void retire(D& d, T* p, Deleter del = Deleter{}) {
  struct Node : Callback {
    T* p;
    Deleter del;
  };
  auto* n = new Node;
  n->p = p;
  n->del = std::move(del);
  n->fn = [](Callback* cb) {
    auto* self = static_cast<Node*>(cb);
    self->del(self->p);
    delete self;
  };
  d.call(n);
}

}  // namespace hp::sync
