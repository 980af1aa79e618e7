// argN of usdt probes (usdt:PATH:[PROVIDER:]NAME): typed by the checker from the notes'
// argument counts, lowered to one node (i_usdt_arg) that decodes, at each hit, the
// argument spec of the note whose site was hit (register, memory, constant; its size and
// sign). A probe's sites may have different specs (a probe inlined in several places,
// a wildcard matching several probes): the node finds the hit's by the probed address,
// in a table filled when the probe is attached (Runtime::spec) and, for a library loaded
// later, on its first hit.
#pragma once

#include <cstdint>

#include "script/ast.h"
#include "script/diag.h"
#include "script/eval.h"

namespace hotprobe::script {

// Up to 12 arguments, as sys/sdt.h writes them and bpftrace reads them (arg0..arg11).
inline constexpr int kMaxUsdtArgs = 12;

enum class UsdtArgCheck : std::uint8_t {
  not_usdt,  // not argN, or not in an action of usdt probes: the builtin rules apply
  ok,        // e.usdt_arg set: an int64
  error,     // reported
};
// The checker's rule for argN in `action`: every probe of the action is a usdt probe and
// every note it matches has more than N arguments (a file that cannot be read now is
// checked when the probe is attached). Reports what is wrong, naming the count.
UsdtArgCheck check_usdt_arg(ast::Expr& e, const ast::Action& action, Diagnostics& diags);

// Makes `n` the node of argN (N = `index`).
void lower_usdt_arg(Node* n, int index);

// Runtime::spec of a usdt probe: the argument specs of the sites of its loaded file, and
// the name `probe` gives each site (usdt:PATH:PROVIDER:NAME, as bpftrace expands it).
void prepare_usdt_probe(ProbeCtx& probe);

std::int64_t i_usdt_arg(const Node* n, Frame& f);

}  // namespace hotprobe::script
