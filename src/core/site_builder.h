// The site builder: from a resolved target to a site that is ready to patch (its
// trampoline or int3 copy written, its original and patched bytes known), but not yet
// patched nor in the registry. jmp mode where a 5-byte jump fits, int3 mode elsewhere.
#pragma once

#include <cstdint>
#include <optional>
#include <span>

#include "arch/x86_64/code_memory.h"
#include "arch/x86_64/frame.h"
#include "base/error.h"
#include "core/batch_helper.h"
#include "core/registry.h"
#include "core/resolver.h"
#include "core/site.h"
#include "core/text_patch.h"
#include "core/x86_64/trampoline.h"
#include "hotprobe/probe.h"

namespace hp::core {

// What building a site takes besides its target and spec, the same for every site of a
// batch: worked out once under the registry lock, so that the sites of a large batch
// can be built on two threads (each with its own trampoline builder; CodeMemory locks
// itself).
struct BuildEnv {
  Scheme scheme = Scheme::tasks_trace;
  std::uint32_t return_depth = 0;
  std::uint64_t dispatcher = 0;
  std::uintptr_t landing_target = 0;  // where landings jump; 0: no landings
  bool fast_ok = false;               // `fast` applies (but for .consumers, each site's)
  FastEntry fast;
};

// A site a batch builds: for the first target that names its place.
struct BuildJob {
  std::size_t target = 0;
  std::size_t spec = 0;
  Site* site = nullptr;  // null: the build failed with `error`
  Error error;
  bool listed = false;  // in the batch's list of fresh sites
};

class SiteBuilder {
 public:
  // What of `spec` decides how its sites are built.
  static SiteOptions options_of(const ProbeSpec& spec);
  static BuildEnv environment(const hotprobe::EngineOptions& options, Registry& reg)
      HP_REQUIRES(reg.mu_);
  // Builds a new site for `t` (not yet patched, not yet in the registry). `reserved`: a
  // slot allocated ahead near the probe address, freed unless taken. `no_long_jump`: its
  // 5-byte jump would overlap another probe's patch, so a short jump or an int3.
  static Result<Site*> build(const Target& t, const SiteOptions& spec, const BuildEnv& env,
                             EntryTrampolineBuilder& builder, arch::CodeMemory& code,
                             std::optional<arch::CodeSlot> reserved, bool no_long_jump = false);
  // One site on the registry's own trampoline builder.
  static Result<Site*> build(const Target& t, const SiteOptions& spec,
                             const hotprobe::EngineOptions& options, Registry& reg)
      HP_REQUIRES(reg.mu_) {
    return build(t, spec, environment(options, reg), reg.entry_builder_, reg.code_, std::nullopt);
  }
  // Builds every job's site, in chunks on this thread and the batch's helper. A chunk
  // touches only its jobs, its thread's trampoline builder, CodeMemory (which locks
  // itself; a chunk's slots under one lock), the heap and the functions' bytes.
  static void build_all(std::span<BuildJob> jobs, std::span<const Target> targets,
                        std::span<const ProbeSpec> specs, const hotprobe::EngineOptions& options,
                        Registry& reg, BatchHelper& helper) HP_REQUIRES(reg.mu_);
  // Patched bytes may not overlap: two probes a few bytes apart (malloc and malloc+2)
  // would have the first's jump cover the second. Among the batch's new sites, every jmp
  // site whose patch overlaps another site's is built again with a short jump (2 bytes
  // inside its first instruction, to a pad) where one fits, else in int3 mode (one byte
  // at its own address); the relocated copy of the first instruction runs into the
  // second's patch, so both hit. A new probe inside the bytes an existing jmp site displaced into
  // its trampoline is refused: that code no longer runs from its place (attach both in
  // one batch, or detach the other first). A new jmp site over an existing one's bytes
  // becomes int3 as well.
  static void separate_overlaps(std::span<BuildJob> jobs, std::span<const Target> targets,
                                std::span<const ProbeSpec> specs,
                                const hotprobe::EngineOptions& options, Registry& reg)
      HP_REQUIRES(reg.mu_);
  // EngineOptions::debug (HOTPROBE_DEBUG through options_from_environment): each site built says
  // its mode (and why int3).
  static bool debug_sites();

  // Chunks of a parallel pass: small enough that the thread that comes late finds some
  // left, large enough that taking one (an atomic add, one CodeMemory lock) is noise.
  static constexpr std::size_t kBuildChunk = 128;
};

// The text_patch request that patches (attach) or restores (!attach) the site's bytes.
PatchSite patch_for(const Site* s, bool attach);

// Tests: false makes separate_overlaps build int3 sites only (no short jumps).
void use_short_jumps_apart_for_testing(bool on);

}  // namespace hp::core
