// The evaluator: a checked AST lowered into trees of nodes that each carry a plain function
// pointer specialized for their kind (no std::function, no virtual call, no allocation on a
// hit). docs/design/script-runtime.md explains the lowering, the maps and the clock.
//
//   auto rt = lower(std::move(checked_ast), OutputFormat::text);   // Result<unique_ptr<Runtime>>
//   rt->sink = &sink;
//   ProbeSpec spec = rt->spec(i);      // handlers call run_hit() with the probe's context
//   rt->run_probe(i, nullptr);         // BEGIN/END/interval: no registers
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "hotprobe/probe.h"
#include "hotprobe/result.h"
#include "script/ast.h"
#include "script/layout.h"
#include "script/maps.h"
#include "script/output.h"
#include "script/program.h"

namespace hotprobe::script {

inline constexpr int kMaxSlots = 32;  // $variables per action

struct Runtime;
struct ProbeCtx;

// Memory reads of one hit: the last 256-byte block read (blocks are 256-aligned, so one
// never crosses a page: if the field is readable, so is its block). The fields of one
// struct then cost one system call, not one each.
inline constexpr std::uint32_t kReadBlock = 256;

struct Frame {
  Hit* hit;  // null for BEGIN, END and interval probes
  Runtime* rt;
  const ProbeCtx* probe;
  std::uint64_t block_addr = 0;  // of `block`; 0: none read yet in this hit
  alignas(8) char block[kReadBlock];
  std::int64_t islots[kMaxSlots];
  char sslots[kMaxSlots][kStrBytes];
};

struct Node;
using IntFn = std::int64_t (*)(const Node*, Frame&);
// Writes a NUL-terminated string of at most kStrBytes bytes to `out`; returns its length.
using StrFn = std::uint32_t (*)(const Node*, Frame&, char* out);

struct Node {
  IntFn i = nullptr;
  StrFn s = nullptr;
  const Node* a = nullptr;
  const Node* b = nullptr;
  const Node* c = nullptr;
  std::int64_t imm = 0;
  std::uint32_t map = 0;  // map id
  std::uint32_t key_words = 0;
  std::vector<const Node*> keys;  // map keys, or call arguments
  std::vector<bool> key_is_string;
  std::string text;  // string literal; time() format
  std::vector<FormatSpec> format;
  std::vector<std::uint8_t> ops;  // i_fold: ast::BinaryOp between keys[k] and keys[k + 1]
  // Memory reads: a bit field's first bit and width in the unit of key_words bytes.
  std::uint8_t bit_offset = 0;
  std::uint8_t bit_width = 0;
  bool is_signed = false;
  // Arrays and structs as values (script/layout.h): the size of the copy this node makes,
  // and the layouts of its values where it prints or stores them (print(): layouts[0];
  // a tuple, printf: one per element, null for the others).
  std::uint32_t bytes = 0;
  std::vector<const ValueLayout*> layouts;
};

struct SNode;
using StmtFn = bool (*)(const SNode*, Frame&);  // false: the action stops

struct SNode {
  StmtFn fn = nullptr;
  const Node* target = nullptr;  // assignment target, or the expression
  const Node* value = nullptr;
  const Node* cond = nullptr;
  std::vector<SNode> body;
  std::vector<SNode> else_body;
  std::int64_t count = 0;
  std::int64_t op = 0;  // compound assignment: ast::BinaryOp
};

struct ActionCode {
  const Node* predicate = nullptr;
  std::vector<SNode> body;
  int num_slots = 0;
};

struct ProbeCtx {
  Runtime* rt = nullptr;
  std::size_t index = 0;
  Probe probe;
  const ActionCode* action = nullptr;
  std::string func;  // the function as written (not a glob)
  bool glob = false;
  std::string prefix;  // "uprobe:MODULE:", `probe` of a glob's hit before the function
  // Globs: probed address -> function name, resolved at spec() time and on a miss.
  mutable std::mutex func_mu;
  mutable std::unordered_map<std::uint64_t, std::string> funcs;
};

struct Runtime {
  OutputFormat format = OutputFormat::text;
  Sink* sink = nullptr;
  std::atomic<bool> exited{false};
  std::atomic<bool> active{true};  // Program::set_active
  // Reads of the traced program's memory (*p, p->f, p[i]) that found no readable memory
  // there and yielded 0, as bpftrace's failed probe_read does.
  std::atomic<std::uint64_t> read_faults{0};
  bool print_maps_on_exit = true;  // config = { print_maps_on_exit = false }
  std::int64_t start_ns = 0;
  std::unique_ptr<MapSet> maps;
  std::vector<std::unique_ptr<Node>> nodes;  // owns every Node
  std::vector<std::unique_ptr<ActionCode>> actions;
  std::vector<std::unique_ptr<ProbeCtx>> probes;
  std::vector<Probe> probe_list;
  // What Node::layouts and MapDesc's layouts point to, by C type.
  std::unordered_map<int, std::shared_ptr<const ValueLayout>> layouts;

  ProbeSpec spec(std::size_t index);
  void run_probe(std::size_t index, Hit* hit);
  std::string print_maps();
  void write(std::string_view text) {
    if (sink) sink->write(text);
  }
};

Result<std::unique_ptr<Runtime>> lower(const ast::Program& program, OutputFormat format);

// The clock behind nsecs: CLOCK_MONOTONIC, read through a calibrated TSC when the TSC is
// invariant (HOTPROBE_SCRIPT_CLOCK=vdso forces clock_gettime).
std::int64_t monotonic_ns();
bool clock_uses_tsc();

// str()'s default and largest length, bpftrace's BPFTRACE_STRLEN default (string values
// themselves hold up to kStrBytes, for `probe` and `func`).
inline constexpr std::uint32_t kStrReadBytes = 64;

// str(): reads a C string of at most `max` bytes (including the NUL) at `addr` in this
// process without faulting; "" when it cannot be read.
std::uint32_t read_user_string(std::uint64_t addr, std::uint32_t max, char* out);
// Reads `n` bytes at `addr` in this process without faulting; false (and `out` zeroed)
// when they cannot all be read.
bool read_user(std::uint64_t addr, void* out, std::size_t n);

}  // namespace hotprobe::script
