// The registry: every patched site of the process (all engines share it), keyed like a
// kernel uprobe, the consumers waiting for their module, the sites retired until nothing
// can use them, and the code memory of trampolines.
//
// Lock order: Registry::mu_ is taken first; under it, text_patch's transaction mutex and
// CodeMemory's mutex (both leaves). No lock is held while waiting for a grace period.
#pragma once

#include <atomic>
#include <cstdint>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "arch/x86_64/code_memory.h"
#include "base/error.h"
#include "base/thread_annotations.h"
#include "core/flat_map.h"
#include "core/site.h"
#include "core/site_key.h"
#include "core/x86_64/trampoline.h"
#include "hotprobe/probe.h"
#include "sync/schemes.h"

namespace hp::core {

using hotprobe::Scheme;

// A site that was unpatched and waits until nothing can use it any more.
struct Retired {
  Site* site;
  std::uint64_t epoch;  // Registry::retire_epoch_ when it was retired
};

class Registry {
 public:
  static Registry& get() {
    static Registry* r = new Registry;  // never destroyed: trampolines outlive statics
    return *r;
  }
  // fork: the registry lock is held across it (taken before, released in both processes).
  static void atfork_lock() HP_NO_THREAD_SAFETY_ANALYSIS { get().mu_.lock(); }
  static void atfork_unlock() HP_NO_THREAD_SAFETY_ANALYSIS { get().mu_.unlock(); }

  Mutex mu_;

  // The sites, under mu_. The invariant: a site is in the map exactly when its bytes are
  // patched in a mapped module; sites_jmp() and sites_int3() count the map's sites by
  // mode; the int3 table (core/int3_mode.h) lists exactly its int3-mode sites, plus the
  // staged ones while a transaction patches them. Only the methods below change these,
  // and each leaves the invariant true (checked in debug builds).
  Site* find(const SiteKey& k) const HP_REQUIRES(mu_) { return sites_.get(k); }
  void prefetch(const SiteKey& k) const HP_REQUIRES(mu_) { sites_.prefetch(k); }
  std::size_t site_count() const HP_REQUIRES(mu_) { return sites_.size(); }
  template <class F>
  void for_each_site(F&& f) const HP_REQUIRES(mu_) {
    sites_.for_each([&](const SiteKey&, Site* s) { f(s); });
  }
  // Sites about to be patched: their int3-mode ones go in the int3 table first, so a
  // thread that traps on a byte being written finds its site.
  void stage(std::span<Site* const> sites) HP_REQUIRES(mu_);
  // The staged sites could not be patched: out of the int3 table again.
  void unstage() HP_REQUIRES(mu_);
  // The staged sites are patched: in the map and the counts.
  void add_patched() HP_REQUIRES(mu_);
  // Sites whose bytes were restored, or whose module was unmapped: out of the map, the
  // counts and the int3 table, and retired until reclaim() frees them.
  void remove_unpatched(std::span<Site* const> sites) HP_REQUIRES(mu_);

  // Consumers whose module is not loaded (applied by the module watcher when it is).
  void add_pending(Consumer* c) HP_REQUIRES(mu_) { pending_.push_back(c); }
  void remove_pending(Consumer* c) HP_REQUIRES(mu_);
  std::vector<Consumer*> take_pending() HP_REQUIRES(mu_) { return std::exchange(pending_, {}); }

  // Sites built inside an engine's open transaction (Engine::begin_transaction): not
  // patched and not in the map (no thread can reach them), patched when the transaction
  // ends. `owner` is the engine's EngineImpl: its later attaches in the transaction add
  // their consumers to the site; another engine's attach of the place is refused.
  void reserve(Site* s, const void* owner) HP_REQUIRES(mu_);
  void unreserve(const Site* s) HP_REQUIRES(mu_);
  struct Reservation {
    Site* site = nullptr;
    const void* owner = nullptr;
  };
  Reservation reserved(const SiteKey& k) const HP_REQUIRES(mu_);
  bool any_reserved() const HP_REQUIRES(mu_) { return !reserved_.empty(); }

  // Retired sites, for reclaim().
  std::uint64_t retire_epoch() const HP_REQUIRES(mu_) { return retire_epoch_; }
  const std::vector<Retired>& retired() const HP_REQUIRES(mu_) { return retired_; }
  std::vector<Retired> take_retired() HP_REQUIRES(mu_) { return std::exchange(retired_, {}); }
  void keep_retired(std::vector<Retired> keep) HP_REQUIRES(mu_);

  // EngineOptions::debug, for the process once an engine asked for it: sites and internal
  // probes say what they became on stderr.
  bool debug() const noexcept { return debug_.load(std::memory_order_relaxed); }
  void set_debug() noexcept { debug_.store(true, std::memory_order_relaxed); }

  std::uint64_t sites_jmp() const noexcept { return sites_jmp_.load(std::memory_order_relaxed); }
  std::uint64_t sites_int3() const noexcept { return sites_int3_.load(std::memory_order_relaxed); }

  // Entry trampolines (520 bytes with the vector save, plus the relocated instructions)
  // and int3 copies. Chunks of about 2 MiB (a multiple of the page and the slot): 10,000
  // trampolines take 4 chunks (8 mappings), not 160.
  arch::CodeMemory code_{768, 12288 * 170};
  arch::CodeMemory ret_code_{1024, 64 * 1024};  // return trampolines (one per scheme)
  // Builds entry trampolines from a labelled template per kind of site (a copy and its fields).
  EntryTrampolineBuilder entry_builder_ HP_GUARDED_BY(mu_);
  // The second thread's, while a large batch builds its sites on two (EngineImpl::
  // build_all(), which holds mu_ until that thread is joined).
  EntryTrampolineBuilder helper_builder_ HP_GUARDED_BY(mu_);
  std::atomic<std::uint64_t> next_id_{1};

  // Two per scheme (the dispatcher saves the vector registers where handlers need it): the
  // one hijacked return addresses point at, and the one entry trampolines' landings jump
  // to, which leaves by ret (the landing's call pushed one return-stack-buffer entry more).
  Result<void> ensure_return_trampoline(Scheme s) HP_REQUIRES(mu_);
  // Where the landings of the scheme's entry trampolines jump (0 until the above).
  std::uintptr_t landing_return_[sync::kSchemeCount] HP_GUARDED_BY(mu_) = {};

 private:
  Registry();
  // The int3 table again: the map's int3-mode sites and the staged ones.
  void publish_int3_table() HP_REQUIRES(mu_);
  // The invariant above, in debug builds (the whole map while it is small, as a walk of
  // 10,000 sites per batch would make the debug stress tests quadratic).
  void check() const HP_REQUIRES(mu_);

  FlatMap<SiteKey, Site*, SiteKeyHash> sites_ HP_GUARDED_BY(mu_);
  std::vector<Site*> staged_ HP_GUARDED_BY(mu_);
  bool staged_int3_ HP_GUARDED_BY(mu_) = false;
  std::vector<Retired> retired_ HP_GUARDED_BY(mu_);
  std::vector<Consumer*> pending_ HP_GUARDED_BY(mu_);
  std::unordered_map<SiteKey, Reservation, SiteKeyHash> reserved_ HP_GUARDED_BY(mu_);
  std::uint64_t retire_epoch_ HP_GUARDED_BY(mu_) = 0;
  std::atomic<std::uint64_t> sites_jmp_{0}, sites_int3_{0};
  std::atomic<bool> debug_{false};
};

}  // namespace hp::core
