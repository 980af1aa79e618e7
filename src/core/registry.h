// The registry: every patched site of the process (all engines share it), keyed like a
// kernel uprobe, the consumers waiting for their module, the sites retired until nothing
// can use them, and the code memory of trampolines.
//
// Lock order: Registry::mu_ is taken first; under it, text_patch's transaction mutex and
// CodeMemory's mutex (both leaves). No lock is held while waiting for a grace period.
#pragma once

#include <atomic>
#include <cstdint>
#include <vector>

#include "arch/x86_64/code_memory.h"
#include "arch/x86_64/trampoline.h"
#include "base/error.h"
#include "base/thread_annotations.h"
#include "core/flat_map.h"
#include "core/site.h"
#include "core/site_key.h"
#include "hotprobe/probe.h"

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
  FlatMap<SiteKey, Site*, SiteKeyHash> sites_ HP_GUARDED_BY(mu_);
  std::vector<Retired> retired_ HP_GUARDED_BY(mu_);
  std::vector<Consumer*> pending_ HP_GUARDED_BY(mu_);  // consumers whose module is not loaded
  std::uint64_t retire_epoch_ HP_GUARDED_BY(mu_) = 0;
  // Entry trampolines (520 bytes with the vector save, plus the relocated instructions)
  // and int3 copies. Chunks of about 2 MiB (a multiple of the page and the slot): 10,000
  // trampolines take 4 chunks (8 mappings), not 160.
  arch::CodeMemory code_{768, 12288 * 170};
  arch::CodeMemory ret_code_{1024, 64 * 1024};  // return trampolines (one per scheme)
  // Builds entry trampolines from a prototype per kind of site (a copy and a few fields).
  arch::EntryTrampolineBuilder entry_builder_ HP_GUARDED_BY(mu_);
  // The second thread's, while a large batch builds its sites on two (EngineImpl::
  // build_all(), which holds mu_ until that thread is joined).
  arch::EntryTrampolineBuilder helper_builder_ HP_GUARDED_BY(mu_);
  std::atomic<std::uint64_t> next_id_{1};
  std::atomic<std::uint64_t> sites_jmp_{0}, sites_int3_{0};

  // Two per scheme (the dispatcher saves the vector registers where handlers need it): the
  // one hijacked return addresses point at, and the one entry trampolines' landings jump
  // to, which leaves by ret (the landing's call pushed one return-stack-buffer entry more).
  Result<void> ensure_return_trampoline(Scheme s) HP_REQUIRES(mu_);
  // Where the landings of the scheme's entry trampolines jump (0 until the above).
  std::uintptr_t landing_return_[6] HP_GUARDED_BY(mu_) = {};

  // The int3 table (core/int3_mode.h) again, from the int3-mode sites in sites_.
  void publish_int3_table() HP_REQUIRES(mu_);

 private:
  Registry();
};

}  // namespace hp::core
