// hotprobe/rcu.h: the C++26 <rcu> interface (P2545) on hotprobe's default RCU domain.
//
// OVERVIEW
//   The default domain is hotprobe's tasks-trace RCU: a read section costs a thread-local
//   increment and decrement and a compiler barrier (no fence, no shared write), plus here
//   one call into libhotprobe each way. Readers may block inside a section. Any thread may
//   read without registering. Deleters run on a worker thread after a grace period, in
//   batches, never inside the retiring thread's read section.
//
// EXAMPLE
//   #include <hotprobe/rcu.h>
//   struct Config : hotprobe::rcu_obj_base<Config> { int limit; };
//   std::atomic<Config*> current{new Config{}};
//
//   int reader() {
//     std::scoped_lock l(hotprobe::rcu_default_domain());  // BasicLockable
//     return current.load(std::memory_order_acquire)->limit;
//   }
//   void writer(int limit) {
//     Config* old = current.exchange(new Config{{}, limit}, std::memory_order_acq_rel);
//     old->retire();  // deleted after every reader that could see it has left
//   }
//
// LIMITS
//   - rcu_synchronize() and rcu_barrier() must not be called inside a read section (the
//     program dies with a message: it would wait for itself), nor from a deleter.
//   - One domain: rcu_default_domain() (P2545 has no other standard domain either).
//   - Deleters run on hotprobe's worker thread "hp-gp-tt"; they must not throw.
//   - fork(): the child may keep using the domain; see docs/design/sync-tasks-trace.md.
#pragma once

#include <memory>
#include <mutex>  // rcu_domain is BasicLockable: std::scoped_lock
#include <type_traits>
#include <utility>

#include "hotprobe/api.h"

namespace hotprobe {

class rcu_domain;
HOTPROBE_API rcu_domain& rcu_default_domain() noexcept;

// A read-side section of the domain; nesting allowed. Meets BasicLockable.
class HOTPROBE_API rcu_domain {
 public:
  rcu_domain(const rcu_domain&) = delete;
  rcu_domain& operator=(const rcu_domain&) = delete;
  void lock() noexcept;
  void unlock() noexcept;

 private:
  friend rcu_domain& rcu_default_domain() noexcept;
  constexpr rcu_domain() noexcept = default;
};

// Returns after every read section of dom that began before the call has ended.
HOTPROBE_API void rcu_synchronize(rcu_domain& dom = rcu_default_domain()) noexcept;
// Returns after every deleter scheduled (retire, rcu_retire) before the call has run.
HOTPROBE_API void rcu_barrier(rcu_domain& dom = rcu_default_domain()) noexcept;

namespace rcu_detail {

// The intrusive node behind retire(): storage for the library's own callback node, and the
// function that runs the deleter. No allocation to retire an rcu_obj_base.
struct retire_node {
  alignas(void*) unsigned char storage[2 * sizeof(void*)];
  void (*invoke)(retire_node*) noexcept;
};

// Queues n; n->invoke(n) runs after a grace period of dom.
HOTPROBE_API void retire_node_enqueue(rcu_domain& dom, retire_node* n) noexcept;

template <class T, class D>
struct retired_ptr final : retire_node {
  T* p;
  [[no_unique_address]] D d;
  retired_ptr(T* ptr, D&& del) : retire_node{}, p(ptr), d(std::move(del)) {}
};

}  // namespace rcu_detail

// Base of a type T whose objects are retired without allocating. T derives from
// rcu_obj_base<T, D>.
template <class T, class D = std::default_delete<T>>
class rcu_obj_base : private rcu_detail::retire_node {
 public:
  // Schedules d(static_cast<T*>(this)) after a grace period.
  void retire(D d = D(), rcu_domain& dom = rcu_default_domain()) noexcept {
    static_assert(std::is_base_of_v<rcu_obj_base, T>, "T must derive from rcu_obj_base<T, D>");
    static_assert(std::is_nothrow_move_constructible_v<D>, "D must be nothrow move constructible");
    // Re-constructed, not assigned: deleters such as lambdas are not assignable.
    std::destroy_at(&deleter_);
    std::construct_at(&deleter_, std::move(d));
    this->invoke = [](rcu_detail::retire_node* n) noexcept {
      auto* self = static_cast<rcu_obj_base*>(n);
      D del = std::move(self->deleter_);
      del(static_cast<T*>(self));
    };
    rcu_detail::retire_node_enqueue(dom, this);
  }

 protected:
  rcu_obj_base() = default;
  rcu_obj_base(const rcu_obj_base&) noexcept : retire_node{} {}
  rcu_obj_base(rcu_obj_base&&) noexcept : retire_node{} {}
  rcu_obj_base& operator=(const rcu_obj_base&) noexcept { return *this; }
  rcu_obj_base& operator=(rcu_obj_base&&) noexcept { return *this; }
  ~rcu_obj_base() = default;

 private:
  [[no_unique_address]] D deleter_{};
};

// Schedules d(p) after a grace period of dom. Allocates one small node (may throw
// std::bad_alloc, or what moving d throws).
template <class X, class D = std::default_delete<X>>
void rcu_retire(X* p, D d = D(), rcu_domain& dom = rcu_default_domain()) {
  auto* n = new rcu_detail::retired_ptr<X, D>(p, std::move(d));
  n->invoke = [](rcu_detail::retire_node* node) noexcept {
    auto* self = static_cast<rcu_detail::retired_ptr<X, D>*>(node);
    self->d(self->p);
    delete self;
  };
  rcu_detail::retire_node_enqueue(dom, n);
}

}  // namespace hotprobe
