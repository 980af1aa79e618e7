// Return probes on `ret` instructions: for code whose runtime walks or copies its stacks
// (Go), where a hijacked return address breaks the runtime's traceback and stack copying
// (DESIGN.md "Return probes where the return address may not be hijacked").
//
// A return probe in this mode is an instruction probe on each `ret` of the function: the
// whole function is decoded with the arch decoder, and for each `ret` the shortest run of
// whole instructions that ends with it and spans at least 5 bytes takes a jump (the plan
// must end exactly at the ret). Its trampoline runs the displaced instructions before the
// ret, then the return handlers with the registers of the moment the ret runs (Go's
// ABIInternal and the System V ABI return the first result in rax), then the ret itself
// (EntryTrampolineSpec::run_at_ret). Refused, with the reason, where a function has
// no ret, or a ret whose run cannot take a jump (a branch into it, a function too short).
// Never an int3: a trap in Go code is fatal (Go owns SIGTRAP).
//
// When: automatically for functions of a Go program or library (one with runtime.*
// symbols) under ProbeSpec::return_mode = automatic; ret_instructions always, hijack
// never; EngineOptions::return_mode (`HOTPROBE_RETURN_PROBES=auto|ret|hijack`), when
// set, overrides every spec.
//
// What differs from hijacked returns: no per-call return instance, so Hit::data points
// at a zeroed word (pair entries with returns through the script's own maps, keyed by
// thread); the filter is evaluated at the ret; Hit::probe_address is the function's
// entry, as for other return probes.
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "hotprobe/probe.h"

namespace hp::core {

// The on_entry handler of every return site (the engine builds their trampolines with
// run_at_ret).
bool is_ret_site_handler(hotprobe::Handler h) noexcept;

// A batch's specs with every return probe that takes the ret mode replaced by its parts: an
// entry probe (when the spec has an entry handler) and one probe per ret.
class RetProbeBatch {
 public:
  // False when no spec takes the ret mode (the batch goes on as it is). Specs that do not
  // resolve here are left as they are, for the engine to report. `forced`: the engine's
  // EngineOptions::return_mode, in place of each spec's.
  bool expand(std::span<const hotprobe::ProbeSpec> specs,
              std::optional<hotprobe::ReturnMode> forced);
  std::span<const hotprobe::ProbeSpec> specs() const { return out_; }
  // Attaches specs() with `attach` (the engine's batch attach) and merges the results;
  // under all_or_nothing a refusal found by expand() attaches nothing.
  using AttachFn = std::function<std::vector<hotprobe::Result<std::vector<hotprobe::Handle>>>(
      std::span<const hotprobe::ProbeSpec>, hotprobe::BatchMode)>;
  using DetachFn = std::function<void(std::span<const hotprobe::Handle>)>;
  std::vector<hotprobe::Result<std::vector<hotprobe::Handle>>> attach(hotprobe::BatchMode mode,
                                                                      const AttachFn& attach,
                                                                      const DetachFn& detach) const;
  // The results of specs(), as results of the original specs. A spec whose parts did not
  // all attach fails with the first error, and `detach` takes back the parts that did.
  std::vector<hotprobe::Result<std::vector<hotprobe::Handle>>> merge(
      std::vector<hotprobe::Result<std::vector<hotprobe::Handle>>>&& parts,
      const std::function<void(std::span<const hotprobe::Handle>)>& detach) const;

 private:
  std::vector<hotprobe::ProbeSpec> out_;
  struct Range {
    std::size_t begin = 0, end = 0;
    bool refused = false;
    hotprobe::Error error;
  };
  std::vector<Range> ranges_;  // per original spec
};

}  // namespace hp::core
