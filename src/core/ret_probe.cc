#include "core/ret_probe.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "arch/x86_64/decode.h"
#include "arch/x86_64/plan.h"
#include "base/error.h"
#include "core/dispatch.h"
#include "elf/modules.h"

namespace hp::core {

using hotprobe::Handle;
using hotprobe::Hit;
using hotprobe::ProbeSpec;

namespace {

// What a return site's handler needs: the user's return handler, filter and cookie. One per
// return site, never freed (a few dozen bytes per attached return probe): a handler may
// still run on it until the engine's detach returns, and nothing tells this file then.
struct RetConsumer {
  hotprobe::Handler on_return;
  hotprobe::Filter filter;
  void* cookie;
  std::uint64_t function;  // Hit::probe_address, as for a hijacked return
};

// A `ret` site's record outlives its probe (a thread may still be in the handler when the
// probe is detached, and the record is small): kept for the life of the process, in a list
// that is never destroyed, so leak checkers see it reachable.
RetConsumer* kept(RetConsumer* c) {
  static std::mutex mu;
  static auto& all = *new std::vector<RetConsumer*>;
  std::lock_guard<std::mutex> l(mu);
  all.push_back(c);
  return c;
}

// General registers only: the engine decides the vector saves from the user's handlers
// (handlers_need_vector_saves), so this wrapper must not write a vector register itself.
__attribute__((target("general-regs-only"))) void ret_site_hit(Hit& h) {
  const auto* rc = static_cast<const RetConsumer*>(h.cookie);
  std::uint64_t data = 0;
  Hit r{h.regs, rc->cookie, &data, rc->function};
  if (rc->filter && !rc->filter(r)) return;
  rc->on_return(r);
}

using hotprobe::ReturnMode;

std::string hex(std::uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%" PRIx64, v);
  return b;
}

// The file offsets (in the function's file) of the return sites of `fn`, or why not.
// With an entry probe too (with_entry), a ret's run must not overlap the entry's jump.
Result<std::vector<std::uint64_t>> return_sites(std::string_view describe,
                                                std::span<const std::uint8_t> fn,
                                                std::uint64_t address,
                                                std::uint64_t function_file_offset,
                                                bool with_entry) {
  std::uint64_t entry_end = 0;
  if (with_entry) {
    auto entry = arch::plan_displacement(fn, address, 0);
    if (entry.ok()) entry_end = entry->patch_address + entry->length - address;
  }
  std::vector<arch::Insn> insns;
  for (std::size_t off = 0; off < fn.size();) {
    auto insn = arch::decode(fn.subspan(off), address + off, /*with_text=*/false);
    if (!insn.ok()) {
      return Error(Errc::not_relocatable,
                   "return probe on " + std::string(describe) +
                       ": cannot decode the whole function to find its `ret` instructions (+" +
                       hex(off) + ": " + insn.error().message() + ")");
    }
    off += insn->length;
    insns.push_back(std::move(*insn));
  }
  const auto branched_to = [&insns](std::uint64_t at) {
    return std::any_of(insns.begin(), insns.end(), [at](const arch::Insn& i) {
      return (i.is_relative_branch() || i.rip_relative) && i.target == at;
    });
  };
  std::vector<std::uint64_t> sites;
  for (std::size_t k = 0; k < insns.size(); k++) {
    if (insns[k].kind != arch::InsnKind::ret) continue;
    const std::uint64_t ret_off = insns[k].address - address;
    auto refuse = [&](const std::string& why) {
      return Error(Errc::not_relocatable,
                   "return probe on " + std::string(describe) + ": the `ret` at +" + hex(ret_off) +
                       " " + why +
                       "; its return address may not be hijacked here (a Go runtime walks "
                       "and copies its stacks), so the function cannot take a return probe");
    };
    if (insns[k].length != 1) return refuse("pops arguments (ret imm16), which is not supported");
    // The latest instruction start whose jump plan ends with the ret, or right before it
    // (the trampoline then runs a ret of its own), over at most 5 instructions back.
    std::optional<std::uint64_t> start;
    Error why(Errc::not_relocatable, "it is less than 5 bytes from the function's start");
    for (std::size_t j = k + 1; j-- > 0 && k - j < 6;) {
      if (insns[k].end() - insns[j].address < 5) continue;
      auto plan = arch::plan_displacement(fn, address, insns[j].address - address);
      if (!plan.ok()) {
        why = plan.error();
        continue;
      }
      const std::uint64_t end = plan->patch_address + plan->length;
      // Ending right before the ret leaves the ret itself unpatched: a branch to it would
      // return without the handlers.
      if (end == insns[k].address && branched_to(insns[k].address)) {
        why = Error(Errc::not_relocatable, "a branch goes to it");
        continue;
      }
      if (plan->patch_address == insns[j].address &&
          (end == insns[k].end() || end == insns[k].address)) {
        start = insns[j].address - address;
        break;
      }
    }
    if (!start) return refuse("cannot take a 5-byte jump (" + std::string(why.message()) + ")");
    if (entry_end > *start) {
      return Error(Errc::not_relocatable,
                   "return probe on " + std::string(describe) + ": the jump for the `ret` at +" +
                       hex(ret_off) + " would displace bytes from +" + hex(*start) +
                       ", which the entry probe's jump displaces too (up to +" + hex(entry_end) +
                       "): the function is too short for both; attach the return probe alone");
    }
    sites.push_back(function_file_offset + *start);
  }
  if (sites.empty()) {
    return Error(Errc::not_relocatable,
                 "return probe on " + std::string(describe) +
                     ": the function has no `ret` instruction (it leaves by a tail call or "
                     "never returns), and its return address may not be hijacked here (a Go "
                     "runtime walks and copies its stacks)");
  }
  return sites;
}

}  // namespace

bool is_ret_site_handler(hotprobe::Handler h) noexcept {
  return h == &ret_site_hit;
}

bool RetProbeBatch::expand(std::span<const ProbeSpec> specs, std::optional<ReturnMode> forced) {
  const auto mode_of = [forced](const ProbeSpec& s) { return forced ? *forced : s.return_mode; };
  if (std::none_of(specs.begin(), specs.end(), [&](const ProbeSpec& s) {
        return s.on_return && mode_of(s) != ReturnMode::hijack;
      }))
    return false;
  auto mods = elf::ModuleList::of_self();
  if (!mods.ok()) return false;
  bool any = false;
  out_.clear();
  ranges_.assign(specs.size(), {});
  for (std::size_t i = 0; i < specs.size(); i++) {
    const ProbeSpec& spec = specs[i];
    Range& r = ranges_[i];
    r.begin = out_.size();
    auto keep = [&] {
      out_.push_back(spec);
      r.end = out_.size();
    };
    const auto colon = spec.target.find(':');
    const ReturnMode mode = mode_of(spec);
    if (!spec.on_return || mode == ReturnMode::hijack || colon == std::string::npos) {
      keep();
      continue;
    }
    const std::string module_spec = spec.target.substr(0, colon);
    const std::string rest = spec.target.substr(colon + 1);
    auto mod = mods->resolve(module_spec);
    if (!mod.ok()) {
      keep();
      continue;
    }
    auto file = mods->elf(**mod);
    if (!file.ok() || (mode == ReturnMode::automatic && !(*file)->is_go())) {
      keep();
      continue;
    }
    auto found = (*file)->lookup(rest);
    if (!found.ok()) {
      keep();
      continue;
    }
    std::vector<ProbeSpec> parts;
    if (spec.on_entry) {
      ProbeSpec e = spec;
      e.on_return = nullptr;
      parts.push_back(std::move(e));
    }
    bool refused = false;
    for (const elf::Target& t : *found) {
      if (!t.symbol || t.offset_in_symbol != 0 || t.symbol->size == 0 || t.symbol->is_ifunc()) {
        refused = true;  // the engine's own refusal says why
        break;
      }
      auto addr = (*mod)->offset_to_address(t.file_offset);
      if (!addr.ok()) {
        r.error = addr.error();
        r.refused = true;
        break;
      }
      const std::string describe = std::string((*mod)->name()) + ":" + std::string(t.symbol->name);
      std::span<const std::uint8_t> fn(reinterpret_cast<const std::uint8_t*>(*addr),
                                       t.symbol->size);
      auto sites = return_sites(describe, fn, *addr, t.file_offset, spec.on_entry != nullptr);
      if (!sites.ok()) {
        r.error = sites.error();
        r.refused = true;
        break;
      }
      for (std::uint64_t site : *sites) {
        ProbeSpec p;
        p.target = module_spec + ":fileoff:" + hex(site);  // a file offset, not an address
        p.on_entry = &ret_site_hit;
        p.cookie = kept(new RetConsumer{spec.on_return, spec.filter, spec.cookie, *addr});
        p.patch = hotprobe::PatchMode::jump_only;  // a trap in Go code is fatal
        // Saves where the user's handlers need them (the wrapper calls through a pointer,
        // which the engine's walk of it would count as "may write").
        p.vector_registers = handlers_need_vector_saves(spec);
        parts.push_back(std::move(p));
      }
    }
    if (refused && !r.refused) {
      keep();  // the engine reports it
      continue;
    }
    any = true;
    if (!r.refused) {
      for (ProbeSpec& p : parts)
        out_.push_back(std::move(p));
    }
    r.end = out_.size();
  }
  return any;
}

std::vector<Result<std::vector<Handle>>> RetProbeBatch::merge(
    std::vector<Result<std::vector<Handle>>>&& parts,
    const std::function<void(std::span<const Handle>)>& detach) const {
  std::vector<Result<std::vector<Handle>>> out;
  out.reserve(ranges_.size());
  for (const Range& r : ranges_) {
    if (r.refused) {
      out.emplace_back(r.error);
      continue;
    }
    std::vector<Handle> handles;
    const Error* failed = nullptr;
    for (std::size_t k = r.begin; k < r.end; k++) {
      if (!parts[k].ok()) {
        if (!failed) failed = &parts[k].error();
        continue;
      }
      handles.insert(handles.end(), parts[k]->begin(), parts[k]->end());
    }
    if (failed) {
      if (!handles.empty()) detach(handles);
      out.emplace_back(*failed);
    } else {
      out.emplace_back(std::move(handles));
    }
  }
  return out;
}

std::vector<Result<std::vector<Handle>>> RetProbeBatch::attach(hotprobe::BatchMode mode,
                                                               const AttachFn& attach_fn,
                                                               const DetachFn& detach) const {
  const bool refused =
      std::any_of(ranges_.begin(), ranges_.end(), [](const Range& r) { return r.refused; });
  if (refused && mode == hotprobe::BatchMode::all_or_nothing) {
    std::vector<Result<std::vector<Handle>>> out;
    const Range* first = nullptr;
    for (const Range& r : ranges_)
      if (r.refused && !first) first = &r;
    for (const Range& r : ranges_) {
      out.emplace_back(r.refused
                           ? r.error
                           : Error(first->error.code(), "not attached (all or nothing): " +
                                                            std::string(first->error.message())));
    }
    return out;
  }
  return merge(attach_fn(out_, mode), detach);
}

}  // namespace hp::core
