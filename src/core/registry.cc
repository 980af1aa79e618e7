// The registry (core/registry.h).
#include "core/registry.h"

#include <pthread.h>

#include "core/dispatch.h"
#include "core/int3_mode.h"
#include "sync/tasks_trace.h"

namespace hp::core {

Result<void> Registry::ensure_return_trampoline(Scheme s) {
  if (return_trampoline(s)) return {};
  std::uintptr_t at[2] = {0, 0};
  for (int by_ret = 0; by_ret < 2; by_ret++) {
    // Anywhere will do: the trampoline is reached through an absolute address.
    auto slot = ret_code_.allocate(reinterpret_cast<std::uint64_t>(&int3_hook));
    if (!slot.ok()) return slot.error();
    arch::ReturnTrampolineSpec spec;
    spec.address = slot->address;
    spec.dispatcher = reinterpret_cast<std::uint64_t>(return_dispatcher(s));
    spec.save_vector = kTrampolinesSaveVectors;
    spec.exit_by_ret = by_ret != 0;
    arch::FastReturn fast;
    if (fast_return_for(s, fast)) spec.fast = &fast;
    auto code = arch::make_return_trampoline(spec);
    if (!code.ok()) return code.error();
    HP_TRY(ret_code_.write(*slot, *code));
    at[by_ret] = slot->address;
  }
  landing_return_[static_cast<int>(s)] = at[1];
  // The entry side of the common return probe, for the fast entry paths (tasks-trace).
  arch::OneReturnEntry one;
  if (s == Scheme::tasks_trace && one_return_entry_for(one)) {
    auto slot = ret_code_.allocate(reinterpret_cast<std::uint64_t>(&int3_hook));
    if (!slot.ok()) return slot.error();
    auto code = arch::make_one_return_entry(one, slot->address);
    if (!code.ok()) return code.error();
    HP_TRY(ret_code_.write(*slot, *code));
    set_one_return_entry(slot->address);
  }
  set_return_trampoline(s, at[0]);
  return {};
}

void Registry::publish_int3_table() {
  std::vector<std::pair<std::uintptr_t, Site*>> entries;
  sites_.for_each([&](const SiteKey&, Site* s) {
    if (s->mode == SiteMode::int3) entries.push_back({s->patch_address, s});
  });
  core::publish_int3_table(std::move(entries));
}

Registry::Registry() {
  // Everything a trap or a dispatch may need is created now, before anything is
  // patched: creating it later could allocate inside a probed malloc.
  (void)sync::tasks_trace();
  for (Scheme s : {Scheme::tasks_trace, Scheme::srcu, Scheme::srcu_fast, Scheme::percpu_rwsem,
                   Scheme::refcount, Scheme::rwlock}) {
    (void)entry_dispatcher(s);
    synchronize(s);  // constructs the scheme's domain
  }
  set_int3_hook(&int3_hook);
  pthread_atfork(&Registry::atfork_lock, &Registry::atfork_unlock, &Registry::atfork_unlock);
}

}  // namespace hp::core
