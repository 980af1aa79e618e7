// ustack without frame pointers: per-module unwind tables built from the modules' CFI
// (.eh_frame), off the hit, and looked up by the frame walk (run_stack.cc) with a binary
// search per frame. docs/design/script-runtime.md, "Stacks: CFI unwinding".
//
//   unwind::prepare();                       // a probe that uses ustack is registered
//   unwind::Rule r;
//   switch (unwind::find(pc, r)) { ... }     // at the hit: the rule for one frame
//
// A table is sorted rows of (pc, how the CFA is found, where rbp was saved), the form of
// the kernel's ORC tables: the return address is at CFA - 8 on x86-64. Tables are built
// from the loaded image (dl_iterate_phdr, PT_GNU_EH_FRAME), never from a file, by the
// thread that registers a probe using ustack and, for modules mapped later, by a builder
// thread of hotprobe's that a hit wakes when it meets code with no table.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace hotprobe::script::unwind {

// How ustack walks (HOTPROBE_USTACK=fp|cfi|auto, read once): `fp` the frame pointers
// only (bpftrace's walk, the default), `auto` the CFI where a module has a table and a
// row for the pc and frame pointers elsewhere, `cfi` the CFI only (the walk ends where
// there is none).
enum class Mode : std::uint8_t { fp, cfi, automatic };
Mode mode();
// A clear message when HOTPROBE_USTACK holds something else (Program::compile refuses the
// script with it); "" when it is unset or one of fp, cfi, auto.
std::string mode_error();
// Tests and benchmarks: overrides HOTPROBE_USTACK for this process.
void set_mode(Mode m);

// How one frame is unwound. kind: CFA = rsp + cfa_off (rsp) or rbp + cfa_off (rbp); the
// caller's rbp is at CFA + rbp_off, or rbp is unchanged when rbp_off is 0; `outermost`: the
// return address is undefined (_start, a thread's start), the walk ends; `unknown`: a
// rule the table cannot hold (a CFA or register expression: PLT entries, signal
// trampolines), or a pc in no FDE of its module.
enum class Kind : std::uint8_t { rsp, rbp, outermost, unknown };
struct Rule {
  Kind kind = Kind::unknown;
  std::int32_t cfa_off = 0;
  std::int16_t rbp_off = 0;
};

// One row: the rule from `pc` (an offset from the module's load address) to the next
// row's pc.
struct Row {
  std::uint32_t pc;
  std::int32_t cfa_off;
  std::int16_t rbp_off;
  Kind kind;
};

enum class Found : std::uint8_t {
  rule,      // `out` holds the pc's rule (its kind may be unknown)
  no_table,  // the pc is in no module with a table yet: it was asked for
};
// At a hit: the rule of the pc's row. Lock-free: two binary searches (the module, the
// row), and at most a flag set and a wake-up when the pc is in no module known yet.
Found find(std::uint64_t pc, Rule& out);

// Builds the tables of every module mapped now that has none yet, and starts the builder
// thread that builds those of modules mapped later. Not on a hit: called where a probe
// that uses ustack is registered. Nothing in `fp` mode.
void prepare();

// Tests: the rows built for the module holding `addr` (empty when it has no table).
std::vector<Row> rows_for_test(std::uint64_t addr);
// Tests: builds the tables of the modules mapped now on the calling thread (prepare()
// without the builder thread); the number of modules with a table.
std::size_t build_now_for_test();
// Tests: how many module sets were published (a rebuild that finds nothing new publishes
// none).
std::size_t sets_published_for_test();

}  // namespace hotprobe::script::unwind
