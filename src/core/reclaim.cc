// Reclamation (core/reclaim.h).
#include "core/reclaim.h"

#include <signal.h>
#include <time.h>

#include <algorithm>

#include "core/dispatch.h"
#include "core/text_patch.h"
#include "core/thread_state.h"
#include "sync/tasks_trace.h"

extern "C" char __start_hp_dispatch[], __stop_hp_dispatch[];  // linker-made bounds

namespace hp::core {

void free_sites(std::span<Site* const> sites, Registry& reg) {
  std::vector<arch::CodeSlot> slots;
  slots.reserve(sites.size());
  for (Site* s : sites) {
    if (!s->trampoline) continue;
    arch::CodeSlot slot;
    slot.address = s->trampoline;
    slot.chunk = s->slot_chunk;
    slot.index = s->slot_index;
    slot.size = reg.code_.slot_size();
    slots.push_back(slot);
  }
  reg.code_.free_many(slots);
  for (Site* s : sites) {
    ConsumerArray::destroy(s->consumers.load(std::memory_order_relaxed));
    delete s;
  }
}

void retire(Scheme scheme, Garbage&& garbage) {
  if (garbage.empty()) return;
  auto* g = new Garbage(std::move(garbage));
  call_after_grace_period(
      scheme,
      [](void* p) {
        auto* g = static_cast<Garbage*>(p);
        for (ConsumerArray* a : g->arrays)
          ConsumerArray::destroy(a);
        for (Consumer* c : g->consumers)
          delete c;
        delete g;
      },
      g);
}

void publish_into(Site* s, Garbage& garbage) {
  ConsumerArray* fresh = ConsumerArray::make(s->members);
  ConsumerArray* old = s->consumers.exchange(fresh, std::memory_order_acq_rel);  // P1: matches P2
  if (old) garbage.arrays.push_back(old);
}

void publish(Site* s, std::vector<Consumer*> freed) {
  Garbage g;
  g.consumers = std::move(freed);
  publish_into(s, g);
  retire(s->scheme, std::move(g));
}

std::uint64_t current_epoch() {
  MutexLock lock(Registry::get().mu_);
  return Registry::get().retire_epoch();
}

void reclaim(const std::vector<Scheme>& schemes, std::uint64_t epoch) {
  Registry& reg = Registry::get();
  MutexLock lock(reg.mu_);
  if (reg.retired().empty()) return;
  std::vector<Retired> keep, ready;
  // Sites are retired unpatched and a grace period has passed for the ones checked
  // here, so none of them gains a return instance after this scan.
  const std::vector<const Site*> referenced = sites_referenced_by_return_stacks();
  for (Retired& r : reg.take_retired()) {
    bool gp_ok = r.epoch <= epoch &&
                 std::find(schemes.begin(), schemes.end(), r.site->scheme) != schemes.end();
    if (!gp_ok) {
      keep.push_back(r);
    } else if (std::binary_search(referenced.begin(), referenced.end(), r.site)) {
      keep.push_back(r);
    } else {
      ready.push_back(r);
    }
  }
  if (!ready.empty()) {
    // A thread whose pc is in the dispatcher's section may be about to return into any
    // trampoline (it left the read section but not yet the call): not outside.
    std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ranges{
        {reinterpret_cast<std::uintptr_t>(__start_hp_dispatch),
         reinterpret_cast<std::uintptr_t>(__stop_hp_dispatch)}};
    // A thread returning from the SIGTRAP handler to an int3 copy passes through the
    // signal restorer (libc's __restore_rt and the rt_sigreturn system call) after the
    // hook has left the section: not outside either.
    struct sigaction cur {};
    if (sigaction(SIGTRAP, nullptr, &cur) == 0 && cur.sa_restorer) {
      auto at = reinterpret_cast<std::uintptr_t>(cur.sa_restorer);
      ranges.push_back({at, at + 16});
    }
    for (Retired& r : ready) {
      ranges.push_back({r.site->trampoline, r.site->trampoline + r.site->trampoline_size});
    }
    // Two samples a little apart: a thread caught in a window no range covers (its first
    // hit's registration inside libc) has moved on, into a sampled range, by the second.
    auto outside = threads_outside(ranges);
    if (outside.ok() && *outside) {
      timespec pause{0, 2'000'000};
      nanosleep(&pause, nullptr);
      outside = threads_outside(ranges);
    }
    if (outside.ok() && *outside) {
      // The int3 table (tasks-trace) may still be read by a late SIGTRAP: free after a
      // tasks-trace grace period too.
      std::vector<Site*> dead;
      for (Retired& r : ready)
        dead.push_back(r.site);
      sync::tasks_trace().call([dead] { free_sites(dead, Registry::get()); });
    } else {
      keep.insert(keep.end(), ready.begin(), ready.end());
    }
  }
  reg.keep_retired(std::move(keep));
}

}  // namespace hp::core
