// One engine's attach, detach and sync (core/engine_impl.h): resolve, build, make the
// consumers, and change the registry through one Transaction.
#include "core/engine_impl.h"

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <mutex>
#include <optional>
#include <unordered_set>

#include "arch/x86_64/clobber.h"
#include "base/assert.h"
#include "base/thread_annotations.h"
#include "core/batch_arena.h"
#include "core/batch_helper.h"
#include "core/dispatch.h"
#include "core/internal_probes.h"
#include "core/reclaim.h"
#include "core/ret_probe.h"
#include "core/site_builder.h"
#include "core/text_patch.h"
#include "core/thread_state.h"
#include "core/transaction.h"
#include "core/usdt_semaphore.h"
#include "hotprobe/probe.h"
#include "sync/tasks_trace.h"

namespace hp::core {

namespace {

// handlers_need_vector_saves() for the last set of handlers asked about: the specs of a
// batch mostly share their handlers, and the answer depends on nothing else.
class VectorSavesMemo {
 public:
  bool operator()(const ProbeSpec& spec) {
    if (!valid_ || spec.on_entry != on_entry_ || spec.on_return != on_return_ ||
        spec.filter != filter_ || spec.vector_registers != vector_registers_) {
      on_entry_ = spec.on_entry;
      on_return_ = spec.on_return;
      filter_ = spec.filter;
      vector_registers_ = spec.vector_registers;
      saves_ = handlers_need_vector_saves(spec);
      valid_ = true;
    }
    return saves_;
  }

 private:
  hotprobe::Handler on_entry_ = nullptr;
  hotprobe::Handler on_return_ = nullptr;
  hotprobe::Filter filter_ = nullptr;
  bool vector_registers_ = false;
  bool saves_ = false;
  bool valid_ = false;
};

}  // namespace

// Takes t.describe: the target is not used after its consumer is made.
// `saves_vectors`: handlers_need_vector_saves(spec), which a batch works out once per set
// of handlers (VectorSavesMemo).
Consumer* EngineImpl::make_consumer(const ProbeSpec& spec, Target& t, Site* site, Registry& reg,
                                    bool saves_vectors) {
  auto* c = new Consumer;
  c->id = reg.next_id_.fetch_add(1, std::memory_order_relaxed);
  c->on_entry = spec.on_entry;
  c->on_return = spec.on_return;
  c->filter = spec.filter;
  c->cookie = spec.cookie;
  c->engine = this;
  c->site = site;
  c->vector_registers = spec.vector_registers;
  c->saves_vectors = saves_vectors;
  c->options = SiteBuilder::options_of(spec);
  c->place = std::move(static_cast<Place&>(t));
  return c;
}

void EngineImpl::resolve_part(const Result<elf::ModuleList>& mods, std::span<const ProbeSpec> specs,
                              ResolvedPart& out) {
  std::optional<Resolver> resolver;
  if (mods.ok()) resolver.emplace(mods.value());
  out.results.reserve(specs.size());
  out.targets.reserve(specs.size());
  out.ends.reserve(specs.size());
  // Looking ahead: the name's slot for the spec 4 on, its symbol for the spec 2 on,
  // in the symbol table of the module last used (a batch mostly names one), after the
  // spec 8 on's own text. Each is a cache miss of about 100 ns in a batch of 10,000.
  auto name_of = [](const ProbeSpec& s) {
    const std::size_t colon = s.target.find(':');
    return colon == std::string::npos ? std::string_view()
                                      : std::string_view(s.target).substr(colon + 1);
  };
  for (std::size_t n = 0; n < specs.size(); n++) {
    const ProbeSpec& spec = specs[n];
    if (n + 8 < specs.size()) __builtin_prefetch(specs[n + 8].target.data());
    if (const elf::ElfFile* last = resolver ? resolver->last_elf() : nullptr) {
      if (n + 4 < specs.size()) last->prefetch_slot(name_of(specs[n + 4]));
      if (n + 2 < specs.size()) last->prefetch_symbol(name_of(specs[n + 2]));
    }
    const std::size_t start = out.targets.size();
    if (!spec.on_entry && !spec.on_return) {
      out.results.push_back(
          Error(Errc::invalid_argument,
                "probe '" + spec.target + "' has neither an entry nor a return handler"));
    } else if (spec.patch == hotprobe::PatchMode::automatic && spec.force_int3 &&
               !spec.allow_int3) {
      out.results.push_back(
          Error(Errc::invalid_argument,
                "probe '" + spec.target +
                    "' sets force_int3 and clears allow_int3, which contradict each other: set "
                    "ProbeSpec::patch to PatchMode::int3 or PatchMode::jump_only instead"));
    } else if (!mods.ok()) {
      out.results.push_back(mods.error());
    } else if (auto t = resolver->resolve(spec.target, spec.on_return != nullptr, out.targets);
               !t.ok()) {
      out.results.push_back(t.error());
    } else {
      out.results.push_back(std::vector<Handle>{});
      out.ends.push_back(out.targets.size());
      continue;
    }
    out.targets.resize(start);  // what a failed spec appended
    out.ends.push_back(start);
    out.any_error = true;
  }
}

std::vector<Result<std::vector<Handle>>> EngineImpl::attach(std::span<const ProbeSpec> specs,
                                                            BatchMode mode) {
  RetProbeBatch ret_probes;  // return probes on `ret` instructions (core/ret_probe.h)
  if (ret_probes.expand(specs, options.return_mode)) {
    return ret_probes.attach(
        mode, [this](std::span<const ProbeSpec> s, BatchMode m) { return attach(s, m); },
        [this](std::span<const Handle> h) { (void)detach(h, true); });
  }
  std::vector<Result<std::vector<Handle>>> results;
  results.reserve(specs.size());
  Registry& reg = Registry::get();
  if (std::any_of(specs.begin(), specs.end(),
                  [](const ProbeSpec& s) { return s.on_return != nullptr; })) {
    ensure_unwinder_probes();
  }
  // Started first: it takes a millisecond to get the other CPU.
  std::optional<BatchHelper> helper(std::in_place,
                                    specs.size() >= kTwoThreads && two_threads_asked());
  auto mods = elf::ModuleList::of_self();
  // Every spec's targets in one list: spec i's are [first[i], first[i + 1]). Resolved in
  // chunks (on two threads in a large batch: the module list and the symbol tables are
  // only read), put together in order.
  // On one thread, one part: the batch resolves straight into its lists.
  const std::size_t chunk =
      helper->two_threads() ? kResolveChunk : std::max<std::size_t>(specs.size(), 1);
  std::vector<ResolvedPart> parts((specs.size() + chunk - 1) / chunk);
  helper->run(specs.size(), chunk, [&](int, std::size_t begin, std::size_t end) {
    resolve_part(mods, specs.subspan(begin, end - begin), parts[begin / chunk]);
  });
  std::vector<Target> targets;
  std::vector<std::size_t> first(specs.size() + 1, 0);
  bool any_error = false;
  if (parts.size() == 1) {
    results = std::move(parts[0].results);
    targets = std::move(parts[0].targets);
    for (std::size_t i = 0; i < parts[0].ends.size(); i++)
      first[i + 1] = parts[0].ends[i];
    any_error = parts[0].any_error;
  } else {
    std::size_t total = 0;
    for (const ResolvedPart& p : parts)
      total += p.targets.size();
    targets.reserve(total);
    std::size_t i = 0;
    for (ResolvedPart& p : parts) {
      const std::size_t base = targets.size();
      for (std::size_t end : p.ends)
        first[++i] = base + end;
      std::move(p.results.begin(), p.results.end(), std::back_inserter(results));
      std::move(p.targets.begin(), p.targets.end(), std::back_inserter(targets));
      any_error |= p.any_error;
    }
  }
  if (any_error && mode == BatchMode::all_or_nothing) return fail_all(results, specs);

  MutexLock lock(reg.mu_);
  Registry::get().mu_.assert_held();  // the analysis names the lock Registry::get().mu_
  // Inside a transaction: the consumers and sites are made, not published or patched.
  const bool staging = staged.depth > 0;
  // The batch's sites, consumers and consumer arrays, one after the other in memory.
  BatchArena::Scope arena;
  // Sized for the batch up front: a batch of 10,000 probes rehashes nothing.
  std::vector<Site*> fresh;  // new sites, patched together (and published once each)
  fresh.reserve(targets.size());
  // The new sites first, all together (on two threads in a large batch): one for each
  // place no site probes yet, built for the first spec that names it. `jobs` is sized
  // for every target, so the map's pointers into it stay put.
  std::vector<BuildJob> jobs;
  jobs.reserve(targets.size());
  FlatMap<SiteKey, BuildJob*, SiteKeyHash> job_by_key;
  job_by_key.reserve(targets.size());
  for (std::size_t i = 0; i < specs.size(); i++) {
    if (!results[i].ok()) continue;
    for (std::size_t k = first[i]; k < first[i + 1]; k++) {
      Target& t = targets[k];
      if (t.pending) continue;
      if (k + kLookAhead < targets.size()) {
        reg.prefetch(targets[k + kLookAhead].key);
        job_by_key.prefetch(targets[k + kLookAhead].key);
      }
      if ((t.known = reg.find(t.key))) continue;
      if (reg.any_reserved()) {
        const Registry::Reservation r = reg.reserved(t.key);
        if (r.site && r.owner != this) {
          results[i] = Error(Errc::busy, t.describe +
                                             " is staged by an open transaction of another "
                                             "engine: attach it after that engine's "
                                             "end_transaction()");
          any_error = true;
          break;
        }
        if ((t.known = r.site)) continue;
      }
      if (const BuildJob* j = job_by_key.get(t.key)) {
        t.job = static_cast<std::size_t>(j - jobs.data());
        continue;
      }
      t.job = jobs.size();
      jobs.push_back({k, i});
      job_by_key.set(t.key, &jobs.back());
    }
  }
  SiteBuilder::build_all(jobs, targets, specs, options, reg, *helper);
  SiteBuilder::separate_overlaps(jobs, targets, specs, options, reg);
  if (staging && !staged.fresh.empty()) refuse_staged_overlaps(jobs, targets, reg);
  helper.reset();  // no second CPU spinning through the patching
  std::vector<std::pair<std::size_t, Consumer*>> made;  // (spec index, consumer)
  made.reserve(specs.size());
  std::unordered_set<Site*> touched_old;  // sites that were there before the batch
  std::unordered_set<Site*> used;         // new sites that got a consumer
  struct Mine {
    Site* site;
    Consumer* consumer;
    bool fresh;
  };
  std::vector<Mine> mine;
  VectorSavesMemo vector_saves;
  for (std::size_t i = 0; i < specs.size(); i++) {
    if (!results[i].ok()) continue;
    const ProbeSpec& spec = specs[i];
    bool failed = false;
    mine.clear();
    for (std::size_t k = first[i]; k < first[i + 1]; k++) {
      Target& t = targets[k];
      if (t.pending) {
        mine.push_back({nullptr, make_consumer(spec, t, nullptr, reg, vector_saves(spec)), false});
        continue;
      }
      Site* site = t.known;
      bool is_fresh = false;
      if (!site) {
        BuildJob& job = jobs[t.job];
        if (!job.site) {
          results[i] = job.error;
          failed = true;
          break;
        }
        site = job.site;
        is_fresh = true;
        if (!job.listed) fresh.push_back(site);
        job.listed = true;
      }
      if (site->scheme != options.scheme) {
        results[i] = Error(
            Errc::already_attached,
            t.describe + " is already probed under the " +
                std::string(hotprobe::to_string(site->scheme)) + " scheme, this engine uses " +
                std::string(hotprobe::to_string(options.scheme)) + ": use one scheme per function");
        failed = true;
        break;
      }
      if (spec.on_return) {
        if (auto r = reg.ensure_return_trampoline(options.scheme); !r.ok()) {
          results[i] = r.error();
          failed = true;
          break;
        }
      }
      mine.push_back({site, make_consumer(spec, t, site, reg, vector_saves(spec)), is_fresh});
    }
    if (failed) {
      for (Mine& m : mine)
        delete m.consumer;
      any_error = true;
      continue;
    }
    for (auto& [s, c, is_fresh] : mine) {
      if (is_fresh) used.insert(s);
      if (staging) {
        // On its site's members (or the pending list) when the transaction ends.
      } else if (s) {
        s->members.push_back(c);
        if (!is_fresh) touched_old.insert(s);
      } else {
        reg.add_pending(c);
      }
      made.push_back({i, c});
      // Handed out here, while the consumer and the result are in cache (a later pass
      // over 10,000 of them missed it twice per probe); the consumers map takes them
      // all at the end, in the order of its slots (register_consumers()).
      results[i]->push_back(Handle{c->id});
    }
  }
  // Sites built for specs that failed on a later target: never published, never
  // patched, so no thread can reach them.
  std::vector<Site*> unused;
  for (BuildJob& j : jobs) {
    if (j.site && (!j.listed || !used.count(j.site))) unused.push_back(j.site);
  }
  if (!unused.empty()) {
    fresh.erase(std::remove_if(fresh.begin(), fresh.end(), [&](Site* s) { return !used.count(s); }),
                fresh.end());
    free_sites(unused, reg);
  }
  auto undo_fresh = [&] { free_sites(fresh, reg); };
  if (any_error && mode == BatchMode::all_or_nothing) {
    for (auto& [i, c] : made) {
      if (staging) {
        // On no list yet.
      } else if (c->site) {
        auto& mem = c->site->members;
        mem.erase(std::remove(mem.begin(), mem.end(), c), mem.end());
      } else {
        reg.remove_pending(c);
      }
      delete c;
    }
    undo_fresh();
    return fail_all(results, specs);
  }
  if (staging) {
    for (Site* s : fresh) {
      reg.reserve(s, this);
      staged.fresh.push_back(s);
    }
    for (auto& [i, c] : made) {
      if (results[i].ok()) staged.attached.set(c->id, c);
    }
    return results;
  }
  // Consumers are published before the patch, so a thread that reaches a new site
  // already finds them.
  Transaction tx(reg);
  for (Site* s : fresh) {
    tx.publish(s);
    tx.patch(s);
  }
  for (Site* s : touched_old)
    tx.publish(s);
  if (auto applied = tx.commit(); !applied.ok()) {
    // Nothing was patched: the fresh sites were reachable by no thread (only through
    // the int3 table, which tasks-trace protects); free them after a grace period.
    // A spec with a target among them fails whole: its consumers on sites that were
    // there before are taken off again, and none of its handles is handed out.
    const std::unordered_set<Site*> unpatched(fresh.begin(), fresh.end());
    for (auto& [i, c] : made) {
      if (c->site && unpatched.count(c->site)) {
        results[i] = Error(applied.error().code(), "could not patch: " + applied.error().message());
      }
    }
    std::vector<Consumer*> dead_consumers;
    Transaction undo(reg);
    for (auto& [i, c] : made) {
      if (results[i].ok()) continue;
      if (!c->site) {
        reg.remove_pending(c);
        delete c;
      } else if (unpatched.count(c->site)) {
        dead_consumers.push_back(c);
      } else {
        auto& mem = c->site->members;
        mem.erase(std::remove(mem.begin(), mem.end(), c), mem.end());
        undo.publish(c->site);
        undo.free_consumer(c, c->site->scheme);
      }
    }
    (void)undo.commit();  // publishes only: cannot fail
    std::vector<Site*> dead = fresh;
    sync::tasks_trace().call([dead, dead_consumers] {
      free_sites(dead, Registry::get());
      for (Consumer* c : dead_consumers)
        delete c;
    });
  }
  register_consumers(made, results);
  // Probing a USDT site raises its semaphore (a pending consumer's: when it is placed).
  for (const auto& [i, c] : made) {
    if (results[i].ok() && c->site) usdt_site_attached(c->place.key);
  }
  return results;
}

// Every consumer of a spec that succeeded goes in the engine's map (by handle id).
void EngineImpl::register_consumers(const std::vector<std::pair<std::size_t, Consumer*>>& made,
                                    const std::vector<Result<std::vector<Handle>>>& results) {
  std::vector<std::pair<std::uint64_t, Consumer*>> by_id;
  by_id.reserve(made.size());
  for (const auto& [i, c] : made) {
    if (results[i].ok()) by_id.push_back({c->id, c});
  }
  consumers.set_many(by_id);
}

std::vector<Result<std::vector<Handle>>> EngineImpl::fail_all(
    std::vector<Result<std::vector<Handle>>>& results, std::span<const ProbeSpec> specs) {
  std::vector<Result<std::vector<Handle>>> out;
  std::string first;
  for (std::size_t i = 0; i < results.size(); i++) {
    if (!results[i].ok() && first.empty())
      first = specs[i].target + ": " + results[i].error().message();
  }
  for (std::size_t i = 0; i < results.size(); i++) {
    if (!results[i].ok()) {
      out.push_back(results[i].error());
    } else {
      out.push_back(Error(
          Errc::invalid_argument,
          "not attached: the batch is all-or-nothing and another probe failed (" + first + ")"));
    }
  }
  return out;
}

Result<void> EngineImpl::detach(std::span<const Handle> handles, bool wait) {
  Registry& reg = Registry::get();
  std::vector<Scheme> schemes_to_sync;
  {
    MutexLock lock(reg.mu_);
    Registry::get().mu_.assert_held();  // the analysis names the lock Registry::get().mu_
    for (Handle h : handles) {
      if (!consumers.get(h.id) && !staged.attached.get(h.id)) {
        return Error(
            Errc::invalid_argument,
            "handle " + std::to_string(h.id) + " is not attached by this engine (detached twice?)");
      }
    }
    if (staged.depth > 0) {
      for (Handle h : handles) {
        if (Consumer* c = staged.attached.get(h.id)) {
          // Attached in this transaction: on no list, reachable by no thread.
          staged.attached.erase(h.id);
          delete c;
        } else if ((c = consumers.get(h.id))) {
          consumers.erase(h.id);
          staged.detached.push_back(c);
        }
      }
      staged.wait |= wait;
      return {};
    }
    Transaction tx(reg);
    std::vector<Consumer*> taken;
    taken.reserve(handles.size());
    for (Handle h : handles) {
      Consumer* c = consumers.get(h.id);
      if (!c) continue;  // a duplicate in the span
      consumers.erase(h.id);
      taken.push_back(c);
    }
    take_off(taken, tx, reg);
    auto committed = tx.commit();
    schemes_to_sync = tx.schemes();
    if (!committed.ok()) {
      // The consumers are gone (their handlers will not run after the grace period),
      // but the code stays patched: report it, keep the sites.
      return Error(
          committed.error().code(),
          "consumers detached, but the code could not be restored: " + committed.error().message());
    }
  }
  if (wait) wait_and_reclaim(schemes_to_sync);
  return {};
}

// The consumers are freed by scheme (one grace period each), the sites that lose them
// republished once each, and those left without consumers restored.
std::vector<Site*> EngineImpl::take_off(std::span<Consumer* const> taken, Transaction& tx,
                                        Registry& reg) {
  reg.mu_.assert_held();  // the same lock: there is one registry
  std::vector<Site*> changed, emptied;
  changed.reserve(taken.size());
  for (Consumer* c : taken) {
    if (!c->site) {  // pending: no reader can reach it
      reg.remove_pending(c);
      delete c;
      continue;
    }
    usdt_site_detached(c->place.key);
    auto& mem = c->site->members;
    mem.erase(std::remove(mem.begin(), mem.end(), c), mem.end());
    tx.free_consumer(c, c->site->scheme);
    changed.push_back(c->site);
  }
  std::sort(changed.begin(), changed.end());
  changed.erase(std::unique(changed.begin(), changed.end()), changed.end());
  for (Site* s : changed) {
    tx.publish(s);
    if (s->members.empty()) {
      tx.unpatch(s);
      emptied.push_back(s);
    }
  }
  return emptied;
}

void EngineImpl::wait_and_reclaim(const std::vector<Scheme>& schemes) {
  const std::uint64_t epoch = current_epoch();
  for (Scheme s : schemes) {
    synchronize(s);
    grace_periods.fetch_add(1, std::memory_order_relaxed);
  }
  reclaim(schemes, epoch);
}

void EngineImpl::sync() {
  wait_and_reclaim({options.scheme});
}

void EngineImpl::begin_transaction() {
  MutexLock lock(Registry::get().mu_);
  Registry::get().mu_.assert_held();  // the analysis names the lock Registry::get().mu_
  staged.depth++;
}

Result<void> EngineImpl::end_transaction() {
  std::vector<Scheme> schemes;
  Result<void> applied;
  {
    MutexLock lock(Registry::get().mu_);
    Registry::get().mu_.assert_held();  // the analysis names the lock Registry::get().mu_
    if (staged.depth == 0) {
      return Error(Errc::invalid_argument,
                   "end_transaction() without an open transaction: call begin_transaction() "
                   "first (each begin takes one end)");
    }
    if (--staged.depth > 0) return {};
    applied = apply_staged(schemes);
  }
  if (!schemes.empty()) wait_and_reclaim(schemes);
  return applied;
}

void EngineImpl::end_open_transaction() {
  {
    MutexLock lock(Registry::get().mu_);
    Registry::get().mu_.assert_held();  // the analysis names the lock Registry::get().mu_
    if (staged.depth == 0) return;
    staged.depth = 1;
  }
  (void)end_transaction();
}

void EngineImpl::refuse_staged_overlaps(std::span<BuildJob> jobs, std::span<const Target> targets,
                                        Registry& reg) {
  for (BuildJob& j : jobs) {
    if (!j.site) continue;
    const std::uintptr_t start = j.site->patch_address;
    const std::uintptr_t end = start + j.site->patched.size();
    for (const Site* s : staged.fresh) {
      if (s->patch_address >= end || s->patch_address + s->patched.size() <= start) continue;
      char at[24];
      std::snprintf(at, sizeof at, "%#" PRIxPTR, s->probe_address);
      free_sites(std::span<Site* const>(&j.site, 1), reg);
      j.site = nullptr;
      j.error = Error(Errc::busy, targets[j.target].describe +
                                      " overlaps the bytes of the probe at " + at +
                                      " staged earlier in this transaction: attach both in "
                                      "one call, or end the transaction between them");
      break;
    }
  }
}

namespace {
// The transaction's probes that went live on a site: their USDT semaphores go up.
void raise_usdt_semaphores(const std::vector<std::pair<std::uint64_t, Consumer*>>& live) {
  for (const auto& [id, c] : live) {
    if (c->site) usdt_site_attached(c->place.key);
  }
}
}  // namespace

Result<void> EngineImpl::apply_staged(std::vector<Scheme>& schemes) {
  Registry& reg = Registry::get();
  reg.mu_.assert_held();  // the same lock: there is one registry
  Staged st = std::exchange(staged, Staged{});
  // In the order they were attached (ids grow), as the consumers' handlers run.
  std::vector<Consumer*> attached;
  attached.reserve(st.attached.size());
  st.attached.for_each([&](std::uint64_t, Consumer* c) { attached.push_back(c); });
  std::sort(attached.begin(), attached.end(),
            [](const Consumer* a, const Consumer* b) { return a->id < b->id; });
  // New sites whose module was unmapped since (or unmapped and mapped again elsewhere):
  // their consumers wait for it, as a probe attached while its module is not loaded does.
  std::unordered_set<Site*> gone;
  if (!st.fresh.empty()) {
    auto mods = elf::ModuleList::of_self();
    for (Site* s : st.fresh) {
      reg.unreserve(s);
      if (!mods.ok()) continue;
      const elf::Module* m =
          mods->find(elf::ModuleKey{static_cast<dev_t>(s->dev), static_cast<ino_t>(s->ino)});
      auto at = m ? m->offset_to_address(s->file_offset) : Result<std::uintptr_t>(0);
      if (!m || !at.ok() || *at != s->probe_address) gone.insert(s);
    }
  }
  Transaction tx(reg);
  std::vector<std::pair<std::uint64_t, Consumer*>> live;
  live.reserve(attached.size());
  const std::unordered_set<Site*> fresh(st.fresh.begin(), st.fresh.end());
  for (Consumer* c : attached) {
    if (c->site && gone.count(c->site)) c->site = nullptr;
    if (c->site && !fresh.count(c->site)) {
      // A site of the registry when it was staged, which a module event may have taken
      // away since (and reclaim freed): the site at its place now, if any, takes it.
      Site* now = reg.find(c->place.key);
      c->site = now && now->scheme == options.scheme ? now : nullptr;
    }
    if (c->site) {
      c->site->members.push_back(c);
      tx.publish(c->site);
    } else {
      reg.add_pending(c);
    }
    live.push_back({c->id, c});
  }
  const std::vector<Site*> emptied = take_off(st.detached, tx, reg);
  std::vector<Site*> patched, unused;
  for (Site* s : st.fresh) {
    (s->members.empty() ? unused : patched).push_back(s);
  }
  for (Site* s : patched)
    tx.patch(s);
  if (!unused.empty()) free_sites(unused, reg);  // never patched: no thread reaches them
  Result<void> committed = tx.commit();
  if (!st.detached.empty() && st.wait) schemes = tx.schemes();
  const Site* first = patched.empty() ? nullptr : patched[0];
  if (committed.ok() || !first || reg.find({first->dev, first->ino, first->file_offset}) == first) {
    consumers.set_many(live);
    raise_usdt_semaphores(live);
    if (committed.ok()) return {};
    return Error(committed.error().code(),
                 "the transaction's probes are attached, but the code of "
                 "those it detached could not be restored: " +
                     committed.error().message());
  }
  // Nothing was patched: the consumers on the new sites are dropped, freed with their
  // sites after a tasks-trace grace period (a thread may have trapped on an int3 being
  // written); the rest, the detaches included, is applied.
  std::vector<Consumer*> dropped;
  for (Site* s : patched)
    dropped.insert(dropped.end(), s->members.begin(), s->members.end());
  const std::unordered_set<Consumer*> dropped_set(dropped.begin(), dropped.end());
  live.erase(std::remove_if(live.begin(), live.end(),
                            [&](const auto& e) { return dropped_set.count(e.second) != 0; }),
             live.end());
  consumers.set_many(live);
  raise_usdt_semaphores(live);
  Result<void> restored;
  if (!emptied.empty()) {
    Transaction rest(reg);
    for (Site* s : emptied)
      rest.unpatch(s);
    restored = rest.commit();
  }
  sync::tasks_trace().call([patched, dropped] {
    free_sites(patched, Registry::get());
    for (Consumer* c : dropped)
      delete c;
  });
  return Error(committed.error().code(),
               std::to_string(dropped.size()) +
                   " probes of the transaction could not be patched and are not attached: " +
                   committed.error().message() +
                   (restored.ok() ? std::string()
                                  : "; the code of the probes it detached could not be restored "
                                    "either: " +
                                        restored.error().message()));
}

}  // namespace hp::core
