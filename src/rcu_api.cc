// The public C++26 <rcu> shape (include/hotprobe/rcu.h) over the default tasks-trace domain.
#include "hotprobe/rcu.h"

#include <cstddef>
#include <new>

#include "sync/domain.h"
#include "sync/tasks_trace.h"

namespace hotprobe {

namespace {

// The library's callback node lives in retire_node::storage; fn finds its retire_node again
// (the kernel's container_of), so retiring an rcu_obj_base allocates nothing.
static_assert(sizeof(hp::sync::Callback) <= sizeof(rcu_detail::retire_node::storage));
static_assert(alignof(hp::sync::Callback) <= alignof(rcu_detail::retire_node));
static_assert(offsetof(rcu_detail::retire_node, storage) == 0);

void run_retire_node(hp::sync::Callback* cb) {
  auto* n = reinterpret_cast<rcu_detail::retire_node*>(reinterpret_cast<unsigned char*>(cb) -
                                                       offsetof(rcu_detail::retire_node, storage));
  n->invoke(n);
}

}  // namespace

rcu_domain& rcu_default_domain() noexcept {
  static constinit rcu_domain dom;
  return dom;
}

void rcu_domain::lock() noexcept {
  (void)hp::sync::TasksTrace::read_lock();
}

void rcu_domain::unlock() noexcept {
  hp::sync::TasksTrace::read_unlock(hp::sync::ReadToken{});
}

void rcu_synchronize(rcu_domain&) noexcept {
  hp::sync::tasks_trace().synchronize();
}

void rcu_barrier(rcu_domain&) noexcept {
  hp::sync::tasks_trace().barrier();
}

namespace rcu_detail {

void retire_node_enqueue(rcu_domain&, retire_node* n) noexcept {
  auto* cb = ::new (static_cast<void*>(n->storage)) hp::sync::Callback;
  cb->fn = &run_retire_node;
  hp::sync::tasks_trace().call(cb);
}

}  // namespace rcu_detail

}  // namespace hotprobe
