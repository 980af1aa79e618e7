// One Engine's state and its attach, detach and sync (engine.cc). Everything it touches
// lives elsewhere: the registry (core/registry.h), the resolver (core/resolver.h), the
// site builder (core/site_builder.h), reclamation (core/reclaim.h), the internal probes
// (core/internal_probes.h).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <span>
#include <utility>
#include <vector>

#include "base/error.h"
#include "core/flat_map.h"
#include "core/registry.h"
#include "core/resolver.h"
#include "core/site.h"
#include "core/site_builder.h"
#include "core/transaction.h"
#include "elf/modules.h"
#include "hotprobe/probe.h"

namespace hp::core {

using hotprobe::BatchMode;
using hotprobe::Handle;

struct EngineImpl {
  hotprobe::EngineOptions options;
  // Not shrunk: attach only fills it (set_many), and a table that shrank after a batch's
  // detach was allocated and rehashed again by the next batch.
  FlatMap<std::uint64_t, Consumer*, std::hash<std::uint64_t>, /*Shrink=*/false> consumers
      HP_GUARDED_BY(Registry::get().mu_);
  std::atomic<std::uint64_t> grace_periods{0};

  // How far ahead a pass over a batch's targets prefetches what a later one will look up
  // (each lookup in a table of 10,000 sites is a cache miss of about 100 ns here).
  static constexpr std::size_t kLookAhead = 8;
  // From this many specs a batch may take a second thread (BatchHelper) for resolving and
  // building; below, starting one costs more than it could take (30-60 us, about the
  // time of 50 probes). Only when EngineOptions::batch_threads >= 2: once the passes
  // missed the cache less (the arena, the lookahead, set_many), one thread did as well
  // here with half the CPU (docs/design.md, "What a batch costs").
  static constexpr std::size_t kTwoThreads = 1024;
  bool two_threads_asked() const { return options.batch_threads >= 2; }
  // Chunks of a parallel pass: small enough that the thread that comes late finds some
  // left, large enough that taking one (an atomic add, one CodeMemory lock) is noise.
  static constexpr std::size_t kResolveChunk = 256;

  // Takes t.describe: the target is not used after its consumer is made.
  // `saves_vectors`: handlers_need_vector_saves(spec), which a batch works out once per set
  // of handlers (VectorSavesMemo).
  Consumer* make_consumer(const ProbeSpec& spec, Target& t, Site* site, Registry& reg,
                          bool saves_vectors);

  // A stretch of a batch's specs, resolved: results[i] for spec i (an empty list of
  // handles when it resolved), its targets, and ends[i] = targets.size() after spec i.
  struct ResolvedPart {
    std::vector<Result<std::vector<Handle>>> results;
    std::vector<Target> targets;
    std::vector<std::size_t> ends;
    bool any_error = false;
  };
  static void resolve_part(const Result<elf::ModuleList>& mods, std::span<const ProbeSpec> specs,
                           ResolvedPart& out);

  std::vector<Result<std::vector<Handle>>> attach(std::span<const ProbeSpec> specs, BatchMode mode);
  // Every consumer of a spec that succeeded goes in the engine's map (by handle id).
  void register_consumers(const std::vector<std::pair<std::size_t, Consumer*>>& made,
                          const std::vector<Result<std::vector<Handle>>>& results)
      HP_REQUIRES(Registry::get().mu_);
  static std::vector<Result<std::vector<Handle>>> fail_all(
      std::vector<Result<std::vector<Handle>>>& results, std::span<const ProbeSpec> specs);
  Result<void> detach(std::span<const Handle> handles, bool wait);
  // Takes the consumers off their sites (or the pending list) in `tx`: the sites left
  // without consumers are restored (returned), the consumers freed after a grace period.
  static std::vector<Site*> take_off(std::span<Consumer* const> taken, Transaction& tx,
                                     Registry& reg) HP_REQUIRES(Registry::get().mu_);
  // Waits a grace period of each scheme (Stats::grace_periods), then frees what it can.
  void wait_and_reclaim(const std::vector<Scheme>& schemes);
  void sync();

  // An open transaction (Engine::begin_transaction): what its attach and detach calls
  // staged, applied by the outermost end_transaction().
  struct Staged {
    int depth = 0;
    // Consumers attached in the transaction, by handle id: on no site's member list yet,
    // nor in the registry's pending list.
    FlatMap<std::uint64_t, Consumer*, std::hash<std::uint64_t>> attached;
    // Sites built for them: reserved in the registry (Registry::reserve), not patched.
    std::vector<Site*> fresh;
    // Consumers detached in the transaction: out of `consumers`, still on their sites.
    std::vector<Consumer*> detached;
    bool wait = false;  // one of those detaches waits (detach, not detach_nosync)
  };
  Staged staged HP_GUARDED_BY(Registry::get().mu_);
  void begin_transaction();
  Result<void> end_transaction();
  // The destructor's: applies a transaction left open, however deep.
  void end_open_transaction();
  // A job whose new site overlaps the patch of a site this transaction staged fails: the
  // two would be written in one patch transaction, each over the bytes it found.
  void refuse_staged_overlaps(std::span<BuildJob> jobs, std::span<const Target> targets,
                              Registry& reg) HP_REQUIRES(Registry::get().mu_);
  // The staged changes, in one registry Transaction. `schemes`: those to wait a grace
  // period of afterwards (empty when nothing detached waits).
  Result<void> apply_staged(std::vector<Scheme>& schemes) HP_REQUIRES(Registry::get().mu_);
};

}  // namespace hp::core
