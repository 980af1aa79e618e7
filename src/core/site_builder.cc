// The site builder (core/site_builder.h).
#include "core/site_builder.h"

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "arch/x86_64/plan.h"
#include "base/assert.h"
#include "core/batch_arena.h"
#include "core/dispatch.h"
#include "core/reclaim.h"
#include "core/ret_probe.h"
#include "core/text_patch_file.h"
#include "elf/elf_file.h"

namespace hp::core {
namespace {

std::atomic<bool> g_short_jumps_apart{true};

// A slot allocated ahead for a site (near its probe address), freed unless taken.
class ReservedSlot {
 public:
  ReservedSlot(arch::CodeMemory& code, std::optional<arch::CodeSlot> slot)
      : code_(code), slot_(slot) {}
  ~ReservedSlot() {
    if (slot_) code_.free(*slot_);
  }
  ReservedSlot(const ReservedSlot&) = delete;
  ReservedSlot& operator=(const ReservedSlot&) = delete;
  // The reserved slot if it reaches `near`, else a new one.
  Result<arch::CodeSlot> take(std::uint64_t near) {
    if (slot_ && arch::slot_reaches(*slot_, near)) return *std::exchange(slot_, std::nullopt);
    return code_.allocate(near);
  }

 private:
  arch::CodeMemory& code_;
  std::optional<arch::CodeSlot> slot_;
};

}  // namespace

BuildEnv SiteBuilder::environment(const hotprobe::EngineOptions& options, Registry& reg) {
  BuildEnv env;
  env.scheme = options.scheme;
  env.return_depth = options.return_stack_depth;
  env.dispatcher = reinterpret_cast<std::uint64_t>(entry_dispatcher(options.scheme));
  // At a function's entry, a landing for return probes (any consumer may add one).
  if (reg.ensure_return_trampoline(options.scheme).ok())
    env.landing_target = reg.landing_return_[static_cast<int>(options.scheme)];
  Site layout;  // fast_entry_for() reads the scheme and the consumers' address
  layout.scheme = options.scheme;
  env.fast_ok = fast_entry_for(layout, env.fast);
  return env;
}

SiteOptions SiteBuilder::options_of(const ProbeSpec& spec) {
  SiteOptions o;
  switch (spec.patch) {
    case hotprobe::PatchMode::automatic:
      o.allow_int3 = spec.allow_int3;
      o.force_int3 = spec.force_int3;
      break;
    case hotprobe::PatchMode::jump_only:
      o.allow_int3 = false;
      o.force_int3 = false;
      break;
    case hotprobe::PatchMode::int3:
      o.allow_int3 = true;
      o.force_int3 = true;
      break;
  }
  o.run_at_ret = is_ret_site_handler(spec.on_entry);  // core/ret_probe.h
  return o;
}

Result<Site*> SiteBuilder::build(const Target& t, const SiteOptions& spec, const BuildEnv& env,
                                 EntryTrampolineBuilder& builder, arch::CodeMemory& code,
                                 std::optional<arch::CodeSlot> reserved, bool no_long_jump) {
  ReservedSlot slots(code, reserved);
  auto site = std::make_unique<Site>();
  site->dev = t.key.dev;
  site->ino = t.key.ino;
  site->file_offset = t.key.off;
  site->scheme = env.scheme;
  site->return_depth = env.return_depth;
  const std::uintptr_t probe = t.function + t.offset;
  site->probe_address = probe;
  std::span<const std::uint8_t> fn(reinterpret_cast<const std::uint8_t*>(t.function),
                                   t.function_size ? t.function_size : t.offset + 16);

  Error jmp_error;
  // What the site copies must be the module file's bytes, not another tracer's (an int3
  // of a kernel uprobe or a debugger): the first address in [from, to) whose byte
  // differs from the file, 0 if none (or the file cannot be read).
  auto unlike_file = [&](std::uintptr_t from, std::uintptr_t to) {
    return first_byte_unlike_file(t.key.dev, t.key.ino, t.module_path, t.key.off + (from - probe),
                                  from, to - from);
  };
  auto changed = [&](std::uintptr_t at) {
    return Error(Errc::busy, t.describe + ": " + code_changed_by_another_tracer(at).message());
  };
  // A jmp-mode site from `plan`: a 5-byte jump at its patch address, or, with a pad, a
  // 2-byte jump to the pad, whose 5-byte jump goes to the trampoline. Engaged when done
  // (the site, or an error that ends the build); else jmp_error says why not.
  auto build_jmp = [&](arch::DisplacementPlan& plan,
                       std::optional<PadClaim> pad) -> std::optional<Result<Site*>> {
    if (t.fragment || (plan.at_entry && !t.function_size && !t.cfi_entry)) {
      // Not a function's entry: flags are live, the stack is the parent function's.
      plan.at_entry = false;
      plan.flags_live = true;
    }
    auto slot = slots.take(plan.patch_address);
    if (!slot.ok()) {
      jmp_error = slot.error();
      return std::nullopt;
    }
    EntryTrampolineSpec ts;
    ts.address = slot->address;
    ts.context = reinterpret_cast<std::uint64_t>(site.get());
    ts.dispatcher = env.dispatcher;
    ts.save_vector = kTrampolinesSaveVectors;
    if (plan.at_entry && !plan.flags_live) ts.landing_target = env.landing_target;
    ts.run_at_ret = spec.run_at_ret;
    if (ts.run_at_ret) ts.landing_target = 0;
    FastEntry fast = env.fast;
    fast.consumers = reinterpret_cast<std::uint64_t>(&site->consumers);
    if (env.fast_ok) ts.fast = &fast;
    auto tramp = builder.build(ts, plan);
    if (tramp.ok() && ts.fast && tramp->code.size() > slot->size) {
      ts.fast = nullptr;  // long relocated code: the plain call to the dispatcher fits
      tramp = builder.build(ts, plan);
    }
    std::uint8_t patch[32];
    HP_CHECK(plan.length <= sizeof patch);  // whole instructions from below the 5th byte
    Result<void> bytes;
    std::uint32_t patch_length = plan.length;
    if (pad) {
      // jmp rel8 to the pad (find_short_pad placed it in reach), the pad's jmp rel32 to
      // the trampoline (the slot is near the site, so near the pad).
      patch_length = 2;
      patch[0] = 0xEB;
      patch[1] = static_cast<std::uint8_t>(pad->at() - (plan.patch_address + 2));
      std::uint8_t jump[kShortPadLength];
      bytes = arch::write_jmp_patch_bytes(pad->at(), kShortPadLength, slot->address, jump);
      pad->jump = PatchBytes(std::span<const std::uint8_t>(jump, kShortPadLength));
    } else {
      bytes = arch::write_jmp_patch_bytes(plan.patch_address, plan.length, slot->address, patch);
    }
    const auto inside = [&](const arch::OffsetPair& p) {
      return p.original > 0 && p.original < plan.length;
    };
    const bool map_fits =
        !tramp.ok() || static_cast<std::size_t>(std::count_if(tramp->map.begin(), tramp->map.end(),
                                                              inside)) <= IpMap::kCapacity;
    if (tramp.ok() && bytes.ok() && map_fits && tramp->code.size() <= slot->size) {
      if (auto w = code.write(*slot, tramp->code); !w.ok()) {
        code.free(*slot);
        return Result<Site*>(w.error());
      }
      site->mode = SiteMode::jmp;
      site->patch_address = plan.patch_address;
      site->at_entry = plan.at_entry;
      // With a pad, the 2 bytes may cover a padding byte after a 1-byte ret: as in memory
      // (checked equal to the file).
      site->original =
          pad ? std::span<const std::uint8_t>(
                    reinterpret_cast<const std::uint8_t*>(plan.patch_address), patch_length)
              : std::span<const std::uint8_t>(plan.original.data(), patch_length);
      site->patched = std::span<const std::uint8_t>(patch, patch_length);
      site->trampoline = slot->address;
      site->trampoline_size = static_cast<std::uint32_t>(tramp->code.size());
      site->landing = tramp->landing_offset ? slot->address + tramp->landing_offset : 0;
      site->slot_chunk = slot->chunk;
      site->slot_index = slot->index;
      for (const arch::OffsetPair& p : tramp->map) {
        if (inside(p)) site->ip_map.push_back({p.original, slot->address + p.relocated});
      }
      builder.recycle(std::move(*tramp));
      if (pad) site->pad = std::move(*pad);
      return Result<Site*>(site.get());
    }
    code.free(*slot);
    jmp_error = !tramp.ok()   ? tramp.error()
                : !bytes.ok() ? bytes.error()
                : !map_fits
                    ? Error(Errc::internal,
                            "more than 4 instructions start inside the displaced "
                            "bytes (a decoder bug): report it with the function's "
                            "bytes")
                    : Error(Errc::internal, "trampoline of " + std::to_string(tramp->code.size()) +
                                                " bytes larger than its slot");
    return std::nullopt;
  };
  if (no_long_jump) {
    jmp_error = Error(Errc::not_relocatable,
                      "its 5-byte jump would overlap the patch of another probe a few bytes away");
  }
  if (!spec.force_int3 && t.function_size && !no_long_jump) {
    auto plan = arch::plan_displacement(fn, t.function, t.offset);
    if (plan.ok()) {
      if (const std::uintptr_t at = unlike_file(probe, plan->patch_address + plan->length)) {
        // Another tracer's byte among the displaced instructions (or hotprobe's own, of a
        // site whose patch this one would overlap: separate_overlaps makes both int3): the
        // one instruction at the probe may still be the file's.
        plan = Error(Errc::busy, "the byte at " + hex(at) + " differs from the module's file");
      }
    }
    if (plan.ok()) {
      if (auto done = build_jmp(*plan, std::nullopt)) {
        if (!done->ok()) return *done;
        if (debug_sites()) std::fprintf(stderr, "hotprobe: %s: jmp site\n", t.describe.c_str());
        return site.release();
      }
    } else {
      jmp_error = plan.error();
    }
  }
  if (!spec.force_int3) {
    // No 5-byte jump: a 2-byte one to a pad in the padding nearby, if there is one.
    std::string path(t.module_path);
    Dl_info info{};  // a module event's target names no path: the loader's name for it
    if (path.empty() && dladdr(reinterpret_cast<void*>(probe), &info) && info.dli_fname)
      path = info.dli_fname;
    auto plan = arch::plan_short_displacement(fn, t.function, t.offset);
    if (plan.ok()) {
      if (const std::uintptr_t at = unlike_file(probe, plan->patch_address + plan->length))
        return changed(at);
    }
    const auto load = [&]() -> Result<std::shared_ptr<const elf::ElfFile>> {
      if (path.empty()) return Error(Errc::not_found, "no path for the module");
      return elf::load_elf(elf::ModuleKey{t.key.dev, t.key.ino}, path);
    };
    auto file = plan.ok() ? load() : Result<std::shared_ptr<const elf::ElfFile>>(plan.error());
    // A 1-byte `ret` followed by padding: the 2 bytes cover the ret and a padding byte.
    std::optional<PadClaim> head_byte;
    if (!plan.ok() && ret_short_jumps_enabled()) {
      if (auto f = load(); f.ok()) {
        auto over = plan_ret_over_padding(**f, probe - t.key.off, t.function, t.offset, head_byte);
        // Both bytes the file's: the ret (else another tracer's, as above) and the padding.
        if (over.ok() && unlike_file(over->patch_address, over->patch_address + 2)) {
          head_byte.reset();
        } else if (over.ok()) {
          plan = std::move(over), file = std::move(f);
        }
      }
    }
    std::optional<PadClaim> pad;
    if (file.ok()) pad = find_short_pad(**file, probe - t.key.off, plan->patch_address + 2);
    // The padding is what the pad gives back on detach: the file's, like the site's bytes.
    if (pad && unlike_file(pad->at(), pad->at() + kShortPadLength)) pad.reset();
    if (pad && head_byte) pad->take_also(std::move(*head_byte));
    if (pad) {
      const std::uintptr_t pad_at = pad->at();
      if (auto done = build_jmp(*plan, std::move(pad))) {
        if (!done->ok()) return *done;
        if (debug_sites()) {
          std::fprintf(stderr, "hotprobe: %s: jmp site, 2-byte jump to a pad at %s (%s)\n",
                       t.describe.c_str(), hex(pad_at).c_str(),
                       plan->length == 1 ? "over the padding after a 1-byte `ret`"
                       : t.function_size ? jmp_error.message().c_str()
                                         : "the function's size is unknown");
        }
        return site.release();
      }
    }
  }
  if (!spec.force_int3 && t.function_size && !spec.allow_int3) {
    return Error(jmp_error.code(), t.describe + ": " + jmp_error.message() +
                                       " (and int3 mode is disabled for this probe)");
  }
  if (!spec.allow_int3 && !spec.force_int3) {
    return Error(Errc::not_relocatable, t.describe +
                                            ": the function size is unknown (no symbol "
                                            "with a size, no FDE in .eh_frame), so a jump "
                                            "cannot be placed safely, and int3 mode is "
                                            "disabled: allow int3 mode, or probe a sized "
                                            "function (a build with symbols)");
  }
  // int3 mode.
  if (const std::uintptr_t at = unlike_file(probe, probe + 1)) return changed(at);
  auto iplan = arch::plan_int3(fn, t.function, t.offset);
  if (!iplan.ok()) return Error(iplan.error().code(), t.describe + ": " + iplan.error().message());
  if (const std::uintptr_t at = unlike_file(probe, probe + iplan->original.size()))
    return changed(at);
  auto slot = slots.take(probe);
  if (!slot.ok()) return Error(slot.error().code(), t.describe + ": " + slot.error().message());
  auto copy = arch::make_int3_copy(*iplan, slot->address);
  if (!copy.ok()) {
    code.free(*slot);
    return Error(copy.error().code(), t.describe + ": " + copy.error().message());
  }
  if (auto w = code.write(*slot, copy->code); !w.ok()) {
    code.free(*slot);
    return w.error();
  }
  site->mode = SiteMode::int3;
  site->patch_address = probe;
  site->at_entry = t.offset == 0 && t.function_size && !t.fragment;
  site->original = {iplan->original[0]};
  site->patched = {0xCC};
  site->resume = slot->address;
  site->copy_chunk = slot->chunk;
  site->copy_index = slot->index;
  site->trampoline = slot->address;
  site->trampoline_size = static_cast<std::uint32_t>(copy->code.size());
  site->slot_chunk = slot->chunk;
  site->slot_index = slot->index;
  if (debug_sites()) {
    std::fprintf(stderr, "hotprobe: %s: int3 site (%s)\n", t.describe.c_str(),
                 spec.force_int3        ? "int3 mode asked for"
                 : t.function_size == 0 ? "the function's size is unknown: no sized symbol, no FDE"
                                        : jmp_error.message().c_str());
  }
  return site.release();
}

bool SiteBuilder::debug_sites() {
  return Registry::get().debug();
}

void SiteBuilder::build_all(std::span<BuildJob> jobs, std::span<const Target> targets,
                            std::span<const ProbeSpec> specs,
                            const hotprobe::EngineOptions& options, Registry& reg,
                            BatchHelper& helper) {
  if (jobs.empty()) return;
  const BuildEnv env = environment(options, reg);
  arch::CodeMemory& code = reg.code_;
  EntryTrampolineBuilder* builders[2] = {&reg.entry_builder_, &reg.helper_builder_};
  helper.run(jobs.size(), kBuildChunk, [&](int worker, std::size_t begin, std::size_t end) {
    // The caller's thread carves from the batch's scope (attach()), the helper from one
    // of its own per chunk.
    std::optional<BatchArena::Scope> scope;
    if (worker != 0) scope.emplace();
    std::vector<std::uint64_t> near;
    near.reserve(end - begin);
    for (std::size_t n = begin; n < end; n++)
      near.push_back(targets[jobs[n].target].function + targets[jobs[n].target].offset);
    std::vector<Result<arch::CodeSlot>> slots = code.allocate_many(near);
    for (std::size_t n = begin; n < end; n++) {
      BuildJob& j = jobs[n];
      Result<arch::CodeSlot>& slot = slots[n - begin];
      auto built = build(targets[j.target], options_of(specs[j.spec]), env, *builders[worker], code,
                         slot.ok() ? std::optional(*slot) : std::nullopt);
      if (built.ok()) {
        j.site = *built;
      } else {
        j.error = built.error();
      }
    }
  });
}

void SiteBuilder::separate_overlaps(std::span<BuildJob> jobs, std::span<const Target> targets,
                                    std::span<const ProbeSpec> specs,
                                    const hotprobe::EngineOptions& options, Registry& reg) {
  struct Range {
    std::uintptr_t start, end;
    std::size_t job;  // jobs.size() for an existing site
    const Site* site;
  };
  auto range_of = [](const Site* s, std::size_t job) {
    return Range{s->patch_address, s->patch_address + s->patched.size(), job, s};
  };
  // The sites already there that could touch the batch's: the whole registry when it
  // is not much larger than the batch, else the few keys around each new place (a
  // patch starts at most 4 bytes after its probe, endbr64, and holds at most 15), so
  // attaching one probe at a time to a process with 10,000 costs 40 lookups, not a
  // walk of the registry.
  std::vector<Range> old;
  if (reg.site_count() <= 8 * jobs.size()) {
    reg.for_each_site([&](Site* s) {
      if (s->patched.size() > 0) old.push_back(range_of(s, jobs.size()));
    });
  } else {
    constexpr std::uint64_t kReach = 4 + PatchBytes::kCapacity + 1;
    for (const BuildJob& j : jobs) {
      const SiteKey& k = targets[j.target].key;
      for (std::uint64_t q = k.off > kReach ? k.off - kReach : 0; q < k.off + kReach; q++) {
        if (Site* s = reg.find({k.dev, k.ino, q}); s && s->patched.size() > 0)
          old.push_back(range_of(s, jobs.size()));
      }
    }
  }
  std::sort(old.begin(), old.end(),
            [](const Range& a, const Range& b) { return a.start < b.start; });
  old.erase(std::unique(old.begin(), old.end(),
                        [](const Range& a, const Range& b) { return a.site == b.site; }),
            old.end());
  // The existing site whose patch holds [start, end), if any.
  auto old_over = [&](std::uintptr_t start, std::uintptr_t end) -> const Site* {
    auto it = std::lower_bound(old.begin(), old.end(), end,
                               [](const Range& r, std::uintptr_t e) { return r.start < e; });
    // The ranges do not overlap one another, so only the one before `end` can hold it.
    if (it == old.begin()) return nullptr;
    --it;
    return it->end > start ? it->site : nullptr;
  };
  std::vector<bool> to_int3(jobs.size(), false);
  std::vector<Range> fresh;
  for (std::size_t n = 0; n < jobs.size(); n++) {
    BuildJob& j = jobs[n];
    const Target& t = targets[j.target];
    const std::uintptr_t probe = t.function + t.offset;
    if (!old.empty()) {
      if (const Site* o = old_over(probe, probe + 1); o && o->mode == SiteMode::jmp) {
        if (j.site) free_sites(std::span<Site* const>(&j.site, 1), reg);
        j.site = nullptr;
        j.error = Error(Errc::busy,
                        t.describe + " lies in the " + std::to_string(o->patched.size()) +
                            " bytes at " + hex(o->patch_address) +
                            " that the probe there moved into its trampoline, so the code at " +
                            hex(probe) +
                            " no longer runs from its place: attach both probes in one batch "
                            "(hotprobe then puts both in int3 mode), or detach the other "
                            "first");
        continue;
      }
    }
    if (!j.site) continue;
    if (!old.empty() && j.site->mode == SiteMode::jmp &&
        old_over(j.site->patch_address, j.site->patch_address + j.site->patched.size())) {
      to_int3[n] = true;
    }
    fresh.push_back(range_of(j.site, n));
  }
  std::sort(fresh.begin(), fresh.end(),
            [](const Range& a, const Range& b) { return a.start < b.start; });
  for (std::size_t a = 0; a < fresh.size(); a++) {
    for (std::size_t b = a + 1; b < fresh.size() && fresh[b].start < fresh[a].end; b++) {
      for (const Range* r : {&fresh[a], &fresh[b]}) {
        if (r->site->mode == SiteMode::jmp) to_int3[r->job] = true;
      }
    }
  }
  if (std::find(to_int3.begin(), to_int3.end(), true) == to_int3.end()) return;
  const BuildEnv env = environment(options, reg);
  // A 5-byte jump site takes a short jump instead where it can (its 2 bytes lie in its
  // own first instruction, so they overlap no other probe's); a short one that still
  // overlaps (a probe at +0 and one at +4 after endbr64 patch the same instruction), and
  // a short site already, become int3 sites.
  auto rebuild = [&](std::size_t n, bool short_jump) {
    reg.mu_.assert_held();  // the caller's (the analysis does not see into a lambda)
    BuildJob& j = jobs[n];
    const Target& t = targets[j.target];
    free_sites(std::span<Site* const>(&j.site, 1), reg);
    j.site = nullptr;
    SiteOptions spec = options_of(specs[j.spec]);
    if (!short_jump) spec.force_int3 = spec.allow_int3;
    if (!short_jump && !spec.allow_int3) {
      j.error = Error(Errc::not_relocatable,
                      t.describe +
                          ": its 5-byte jump would overlap the patch of another probe a few "
                          "bytes away, and int3 mode is disabled for this probe");
      return;
    }
    auto built = build(t, spec, env, reg.entry_builder_, reg.code_, std::nullopt, true);
    if (built.ok()) {
      j.site = *built;
    } else {
      j.error = built.error();
    }
  };
  std::vector<std::size_t> shorts;
  for (std::size_t n = 0; n < jobs.size(); n++) {
    if (!to_int3[n]) continue;
    const bool short_jump = !jobs[n].site->pad && g_short_jumps_apart.load();
    rebuild(n, short_jump);
    if (short_jump && jobs[n].site && jobs[n].site->mode == SiteMode::jmp) shorts.push_back(n);
  }
  for (std::size_t n : shorts) {
    const Range r = range_of(jobs[n].site, n);
    bool overlaps = !old.empty() && old_over(r.start, r.end);
    for (std::size_t m = 0; m < jobs.size() && !overlaps; m++) {
      const Site* o = jobs[m].site;
      overlaps =
          m != n && o && o->patch_address < r.end && o->patch_address + o->patched.size() > r.start;
    }
    if (overlaps) rebuild(n, false);
  }
}

void use_short_jumps_apart_for_testing(bool on) {
  g_short_jumps_apart.store(on);
}

PatchSite patch_for(const Site* s, bool attach) {
  PatchSite p;
  p.addr = s->patch_address;
  p.old_bytes = attach ? s->original : s->patched;
  p.new_bytes = attach ? s->patched : s->original;
  if (s->mode == SiteMode::jmp) {
    // A thread trapped during the window goes through the trampoline: the probe (with
    // whatever consumers are published) and then the displaced instructions.
    p.trap_target = s->trampoline;
    if (attach) p.ip_map = s->ip_map;
    if (s->pad) {
      p.pad_at = s->pad.at();
      p.pad_old = attach ? s->pad.original : s->pad.jump;
      p.pad_new = attach ? s->pad.jump : s->pad.original;
      p.pad_first = attach;
    }
  } else {
    p.trap_target = s->resume;  // the int3 hook runs first while the site is listed
  }
  return p;
}

}  // namespace hp::core
