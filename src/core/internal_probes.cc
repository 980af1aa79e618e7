// The engine's internal probes (core/internal_probes.h) and the module events the
// watcher reports.
#include "core/internal_probes.h"

#include <link.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "arch/x86_64/clobber.h"
#include "base/thread_annotations.h"
#include "core/dispatch.h"
#include "core/engine_impl.h"
#include "core/reclaim.h"
#include "core/site_builder.h"
#include "core/text_patch.h"
#include "core/thread_state.h"
#include "core/transaction.h"
#include "core/usdt_semaphore.h"
#include "elf/modules.h"
#include "sync/tasks_trace.h"

namespace hp::core {
namespace {

// The module watcher: an internal probe on the dynamic linker's _dl_debug_state, which
// it calls around every dlopen and dlclose (the hook debuggers use). At each consistent
// state, probes whose file was mapped are applied and probes whose file was unmapped
// go back to pending. It runs in the thread that called dlopen, before dlopen returns,
// so the library's functions are probed before the caller can reach them.
// Internal probes (the module watcher, the unwinder hooks) live while some Engine
// does: the last Engine's destructor removes them, so a process whose last session
// ended (hotprobe attach) has the file's bytes everywhere again. Lock order: internal
// mutex, then the registry's.
struct Internal {
  hp::Mutex mu;
  int engines HP_GUARDED_BY(mu) = 0;
  EngineImpl* impl HP_GUARDED_BY(mu) = nullptr;  // never freed: trampolines outlive it
  std::vector<Handle> watcher HP_GUARDED_BY(mu);
  std::vector<Handle> unwinder HP_GUARDED_BY(mu);
  bool watcher_on HP_GUARDED_BY(mu) = false;
  bool unwinder_on HP_GUARDED_BY(mu) = false;
};

Internal& internal() {
  static Internal* in = new Internal;  // leaked: threads may use it after static dtors
  return *in;
}

EngineImpl* internal_impl(Internal& in) HP_REQUIRES(in.mu) {
  if (!in.impl) {
    in.impl = new EngineImpl;
    in.impl->options.scheme = Scheme::tasks_trace;
  }
  return in.impl;
}

std::vector<Handle> attach_internal(Internal& in, std::vector<ProbeSpec>& specs, const char* what)
    HP_REQUIRES(in.mu) {
  auto results = internal_impl(in)->attach(specs, BatchMode::best_effort);
  std::vector<Handle> handles;
  for (std::size_t i = 0; i < specs.size(); i++) {
    if (results[i].ok()) handles.insert(handles.end(), results[i]->begin(), results[i]->end());
    if (Registry::get().debug()) {
      std::fprintf(stderr, "hotprobe: %s %s: %s\n", what, specs[i].target.c_str(),
                   results[i].ok() ? "attached" : results[i].error().message().c_str());
    }
  }
  return handles;
}

void module_event();

// A failure after attach returned, to the engine's EngineOptions::on_error or stderr.
void report(const EngineImpl* engine, const Error& e) {
  if (engine->options.on_error) {
    engine->options.on_error(e, engine->options.on_error_cookie);
  } else {
    std::fprintf(stderr, "hotprobe: %s\n", e.message().c_str());
  }
}

// The module watcher: an internal probe on the dynamic linker's _dl_debug_state, which
// it calls around every dlopen and dlclose (the hook debuggers use). At each consistent
// state, probes whose file was mapped are applied and probes whose file was unmapped
// go back to pending. It runs in the thread that called dlopen, before dlopen returns,
// so the library's functions are probed before the caller can reach them.
void install_module_watcher(Internal& in) HP_REQUIRES(in.mu) {
  in.watcher_on = true;
  auto mods = elf::ModuleList::of_self();
  if (!mods.ok()) return;
  std::vector<ProbeSpec> specs;
  for (const elf::Module& m : mods->modules()) {
    auto elf = mods->elf(m);
    if (!elf.ok() || (*elf)->find("_dl_debug_state").empty()) continue;
    ProbeSpec ps;
    ps.target = m.path + ":_dl_debug_state";
    ps.on_entry = [](hotprobe::Hit&) { module_event(); };
    specs.push_back(std::move(ps));
  }
  in.watcher = attach_internal(in, specs, "module watcher");
}

}  // namespace

// An Engine was created: counted, and the module watcher is in place.
void engine_created() {
  Internal& in = internal();
  MutexLock lock(in.mu);
  in.engines++;
  if (!in.watcher_on) install_module_watcher(in);
}

// An Engine was destroyed (its consumers detached): the last one takes the internal
// probes off, in one batch. The unwinder hooks stay while a return instance of a
// detached site is still live on some thread's stack (a thread blocked inside a probed
// function): an exception thrown through that frame needs them.
void engine_destroyed() {
  Internal& in = internal();
  MutexLock lock(in.mu);
  if (--in.engines > 0) return;
  std::vector<Handle> off = in.watcher;
  bool returns_live = false;
  {
    Registry& reg = Registry::get();
    MutexLock rl(reg.mu_);
    const std::vector<const Site*> referenced = sites_referenced_by_return_stacks();
    for (const Retired& r : reg.retired())
      returns_live |= std::binary_search(referenced.begin(), referenced.end(), r.site);
  }
  if (!returns_live) off.insert(off.end(), in.unwinder.begin(), in.unwinder.end());
  if (!off.empty()) (void)internal_impl(in)->detach(off, true);
  in.watcher.clear();
  in.watcher_on = false;
  if (!returns_live) {
    in.unwinder.clear();
    in.unwinder_on = false;
  }
}

// Internal probes that keep unwinders working through hijacked return addresses (see
// dispatch.h): installed once, before the first return probe, in every loaded module
// that defines the unwinder's entry points (libgcc_s, or a static copy in the program).
void ensure_unwinder_probes() {
  Internal& in = internal();
  MutexLock lock(in.mu);
  if (in.unwinder_on) return;
  in.unwinder_on = true;
  auto mods = elf::ModuleList::of_self();
  if (!mods.ok()) return;
  static const char* const kUnhijack[] = {"_Unwind_RaiseException", "_Unwind_Resume",
                                          "_Unwind_Resume_or_Rethrow", "_Unwind_ForcedUnwind",
                                          "_Unwind_Backtrace"};
  std::vector<ProbeSpec> specs;
  for (const elf::Module& m : mods->modules()) {
    auto elf = mods->elf(m);
    if (!elf.ok()) continue;
    auto add = [&](const char* name, hotprobe::Handler h) {
      if ((*elf)->find(name).empty()) return;
      ProbeSpec ps;
      ps.target = m.path + ":" + name;
      ps.on_entry = h;
      ps.vector_registers = true;
      specs.push_back(std::move(ps));
    };
    for (const char* n : kUnhijack)
      add(n, [](hotprobe::Hit&) { unhijack_all(); });
    add("__cxa_begin_catch", [](hotprobe::Hit& h) { rehijack_live(h.regs->rsp); });
  }
  in.unwinder = attach_internal(in, specs, "internal probe");
}

namespace {

void module_event() {
  if (_r_debug.r_state != r_debug::RT_CONSISTENT) return;
  arch::forget_vector_register_walks();  // an unloaded handler's address may hold new code
  auto mods = elf::ModuleList::of_self();
  if (!mods.ok()) return;
  Registry& reg = Registry::get();
  MutexLock lock(reg.mu_);
  Registry::get().mu_.assert_held();  // the analysis names the lock Registry::get().mu_
  auto loaded = [&](std::uint64_t dev, std::uint64_t ino) {
    return mods->find(elf::ModuleKey{static_cast<dev_t>(dev), static_cast<ino_t>(ino)});
  };
  // Unmapped: the code is gone, so nothing is restored; the site retires as usual and
  // its consumers wait for the file to be mapped again.
  std::vector<Site*> gone;
  reg.for_each_site([&](Site* site) {
    if (!loaded(site->dev, site->ino)) gone.push_back(site);
  });
  if (!gone.empty()) {
    Transaction unmap(reg);
    for (Site* site : gone) {
      for (Consumer* c : site->members) {
        c->site = nullptr;
        reg.add_pending(c);
      }
      usdt_site_unmapped({site->dev, site->ino, site->file_offset});
      site->members.clear();
      unmap.publish(site);
      unmap.unmapped(site);
    }
    (void)unmap.commit();  // nothing to patch: cannot fail
  }
  // Mapped: pending consumers get their sites.
  std::vector<Consumer*> still;
  std::vector<Site*> fresh;
  std::unordered_map<SiteKey, Site*, SiteKeyHash> fresh_by_key;
  std::unordered_set<Site*> touched;
  std::vector<Consumer*> placed;
  for (Consumer* c : reg.take_pending()) {
    const SiteKey key = c->place.key;
    const elf::Module* m = loaded(key.dev, key.ino);
    if (!m) {
      still.push_back(c);
      continue;
    }
    Site* site = reg.find(key);
    if (auto f = fresh_by_key.find(key); !site && f != fresh_by_key.end()) site = f->second;
    auto* owner = static_cast<EngineImpl*>(const_cast<void*>(c->engine));
    if (!site) {
      // The consumer's place, at its function's address in this mapping.
      auto fa = m->offset_to_address(c->place.function_file_offset);
      Target t;
      static_cast<Place&>(t) = c->place;
      t.function = fa.ok() ? *fa : 0;
      auto built = fa.ok() ? SiteBuilder::build(t, c->options, owner->options, reg)
                           : Result<Site*>(fa.error());
      if (!built.ok()) {
        report(owner, Error(built.error().code(),
                            c->place.describe + " stays pending: " + built.error().message()));
        still.push_back(c);
        continue;
      }
      site = *built;
      fresh.push_back(site);
      fresh_by_key[key] = site;
    }
    if (c->on_return && !reg.ensure_return_trampoline(site->scheme).ok()) {
      still.push_back(c);
      continue;
    }
    c->site = site;
    site->members.push_back(c);
    touched.insert(site);
    placed.push_back(c);
  }
  for (Consumer* c : still)
    reg.add_pending(c);
  Transaction tx(reg);
  for (Site* s : touched)
    tx.publish(s);
  for (Site* s : fresh)
    tx.patch(s);
  if (auto applied = tx.commit(); !applied.ok()) {
    const Error e(applied.error().code(),
                  "probes on a loaded library stay pending: " + applied.error().message());
    std::vector<const EngineImpl*> told;
    for (Site* s : fresh) {
      for (Consumer* c : s->members) {
        auto* owner = static_cast<const EngineImpl*>(c->engine);
        if (std::find(told.begin(), told.end(), owner) != told.end()) continue;
        told.push_back(owner);
        report(owner, e);
      }
    }
    Transaction undo(reg);
    for (Site* s : fresh) {
      for (Consumer* c : s->members) {
        c->site = nullptr;
        reg.add_pending(c);
      }
      s->members.clear();
      undo.publish(s);
    }
    (void)undo.commit();  // publishes only: cannot fail
    std::vector<Site*> dead = fresh;
    sync::tasks_trace().call([dead] { free_sites(dead, Registry::get()); });
  }
  // The probes placed in the loaded file raise their USDT semaphores now (those of sites
  // that could not be patched wait, pending, with no site).
  for (Consumer* c : placed) {
    if (c->site) usdt_site_attached(c->place.key);
  }
}

}  // namespace

}  // namespace hp::core
