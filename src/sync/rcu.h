// The C++26 <rcu> shape (P2545) inside the library, inline, on any reclaiming domain (the
// default being tasks-trace). The public, ABI-stable version is include/hotprobe/rcu.h,
// implemented in src/rcu_api.cc on top of this.
//
// OVERVIEW
//   RcuDomain<D>    BasicLockable view of a domain: lock()/unlock() are its read section, so
//                   std::scoped_lock works. Only for domains whose read token carries nothing
//                   (tasks-trace); SRCU-style domains need their token and use ReadGuard.
//   RcuObjBase<T>   embeds the callback node: retiring an object allocates nothing.
//   rcu_retire(p)   frees any object after a grace period (allocates one small node).
//
// EXAMPLE
//   struct Node : hp::sync::RcuObjBase<Node> { int v; };
//   std::atomic<Node*> head;
//   { std::scoped_lock l(hp::sync::rcu_default()); use(head.load(std::memory_order_acquire)); }
//   Node* old = head.exchange(new Node{...});
//   old->retire();               // deleted on the worker after a grace period
//
// LIMITS
//   retire() and rcu_retire() never run the deleter inside the caller's read section, and
//   never synchronously: a deleter runs on the domain's worker thread.
#pragma once

#include <memory>
#include <type_traits>
#include <utility>

#include "sync/domain.h"
#include "sync/tasks_trace.h"

namespace hp::sync {

template <ReclaimingDomain D>
requires std::is_same_v<D, TasksTrace>
class RcuDomain {
 public:
  explicit constexpr RcuDomain(D& d) noexcept : d_(d) {}
  HP_ALWAYS_INLINE void lock() noexcept { (void)d_.read_lock(); }
  HP_ALWAYS_INLINE void unlock() noexcept { d_.read_unlock(ReadToken{}); }
  D& domain() const noexcept { return d_; }

 private:
  D& d_;
};

// The default domain as a BasicLockable.
inline RcuDomain<TasksTrace> rcu_default() noexcept {
  return RcuDomain<TasksTrace>(tasks_trace());
}

// Base of objects retired without allocation. T must derive from RcuObjBase<T, Deleter>.
template <class T, class Deleter = std::default_delete<T>>
class RcuObjBase : private Callback {
 public:
  // Schedules d(static_cast<T*>(this)) after a grace period of dom.
  template <ReclaimingDomain D = TasksTrace>
  void retire(Deleter d = Deleter(), D& dom = tasks_trace()) noexcept {
    static_assert(std::is_base_of_v<RcuObjBase, T>, "T must derive from RcuObjBase<T, Deleter>");
    // Re-constructed, not assigned: deleters such as lambdas are not assignable.
    std::destroy_at(&deleter_);
    std::construct_at(&deleter_, std::move(d));
    Callback::fn = [](Callback* cb) {
      auto* self = static_cast<RcuObjBase*>(cb);
      Deleter del = std::move(self->deleter_);
      del(static_cast<T*>(self));
    };
    dom.call(static_cast<Callback*>(this));
  }

 protected:
  RcuObjBase() = default;
  // Copies and moves start unretired: the node belongs to one object.
  RcuObjBase(const RcuObjBase&) noexcept : Callback() {}
  RcuObjBase& operator=(const RcuObjBase&) noexcept { return *this; }
  ~RcuObjBase() = default;

 private:
  [[no_unique_address]] Deleter deleter_{};
};

template <class T, class Deleter = std::default_delete<T>, ReclaimingDomain D = TasksTrace>
void rcu_retire(T* p, Deleter d = Deleter(), D& dom = tasks_trace()) {
  retire(dom, p, std::move(d));
}

}  // namespace hp::sync
