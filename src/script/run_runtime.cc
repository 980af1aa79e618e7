// The Runtime's probes and its end-of-run print (eval.h); a hit runs in run_nodes.cc.
#include <algorithm>
#include <mutex>

#include "hotprobe/symbols.h"
#include "script/eval.h"
#include "script/run_nodes.h"
#include "script/run_stack.h"
#include "script/run_usdt.h"
#include "script/unwind_table.h"

namespace hotprobe::script {

using nodes::on_hit;

ProbeSpec Runtime::spec(std::size_t index) {
  ProbeCtx& p = *probes.at(index);
  ProbeSpec s;
  s.target = p.probe.target;
  s.cookie = &p;
  if (p.probe.kind == Probe::Kind::uretprobe) {
    s.on_return = on_hit;
  } else {
    s.on_entry = on_hit;
  }
  if (p.glob) {
    // Name every site the glob matches now, so func costs a lookup, not a symbolization.
    if (auto fns = resolve_functions(p.probe.target)) {
      std::lock_guard lock(p.func_mu);
      for (const FunctionInfo& fi : *fns)
        if (fi.address) p.funcs.emplace(fi.address + fi.offset, fi.name);
    }
  }
  // A usdt probe: the argument specs of its sites (argN) and their names (probe).
  if (p.probe.target.find(":usdt:") != std::string::npos) prepare_usdt_probe(p);
  // ustack's CFI tables (unwind_table.h) are built here, off the hit.
  for (std::size_t m = 0; m < maps->size(); ++m)
    if (maps->desc(m).stack_frames || stack_values_used()) {
      unwind::prepare();
      break;
    }
  return s;
}

std::string Runtime::print_maps() {
  std::string out;
  if (!print_maps_on_exit) return out;
  if (format == OutputFormat::text) out += "\n\n";  // bpftrace's main() prints these first
  // bpftrace 0.17 prints its maps in name order.
  std::vector<std::size_t> order(maps->size());
  for (std::size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](std::size_t x, std::size_t y) { return maps->desc(x).name < maps->desc(y).name; });
  for (std::size_t i : order)
    append_map(out, maps->desc(i), maps->snapshot(i), format);
  return out;
}

}  // namespace hotprobe::script
