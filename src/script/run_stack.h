// ustack at a hit: the probed thread's return addresses by its frame pointers, as the
// kernel's user stack walk (perf_callchain_user) records them for bpftrace: the probed
// pc, then [rbp + 8] along the rbp chain. docs/design/script-language.md, "Stacks and
// symbols". With HOTPROBE_USTACK=cfi or auto, by the modules' CFI tables instead
// (unwind_table.h; docs/design/script-runtime.md, "Stacks: CFI unwinding").
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "hotprobe/regs.h"

namespace hotprobe::script {

// Writes [n, pc, return addresses...] into out[0 .. 1 + n): n frames, at most `max`; the
// words after them are left as they are (maps read a ustack part up to its last frame:
// maps.h, key_length). `at_entry`: the probe is at a function's entry (entry_instruction), so
// the caller's return address at [rsp] follows the pc, as the kernel records it. Never faults:
// reads above the probed rsp within the thread's own stack mapping are plain loads (the mapping is
// looked up once per thread); elsewhere (coroutine and goroutine stacks, sigaltstacks) each frame
// is read with process_vm_readv. The walk stops at a zero or unreadable frame pointer, one that
// does not grow (a loop), or a zero return address. By CFI (unwind::mode() not fp) each frame
// is unwound by its pc's row, the stack read the same way, and the walk also stops at a CFA
// that does not grow, an outermost frame (_start), and (cfi) a pc with no row; `at_entry`
// then matters only where a frame falls back to frame pointers (auto).
void capture_ustack(const Regs& regs, bool at_entry, std::uint32_t max, std::uint64_t* out);

// Whether the probed instruction at `addr` is `push %rbp` or `endbr64` in the module's
// file (the kernel's heuristic for a uprobe at a function's entry, since Linux 6.11).
// Looked up once per address (a file read), then one table probe.
bool entry_instruction(std::uint64_t addr);

// The stack mapping the fast path reads in (tests): [lo, hi) of the calling thread,
// {0, 0} when none was found yet or it is not the thread's own stack.
struct StackBounds {
  std::uint64_t lo = 0, hi = 0;
};
StackBounds ustack_bounds_for_test();

// ustack and usym as values (printf("%s", ustack), print(usym(p)), $s = ustack, tuples):
// docs/design/script-language.md, "Stacks and symbols". A value is a short string, a
// marker, that names raw addresses: the hit never symbolizes. usym's marker holds the
// address; ustack's holds the id of its frames in this process's stack table (frames
// interned once, as bpftrace's stack map keeps them). The printers (output.cc) replace a
// marker by its text. A marker starts with kSymbolMarker, a control byte no program
// string reaches the output with (text output escapes them, JSON too), then this
// process's nonce: a string of the traced program cannot forge one.
inline constexpr char kSymbolMarker = '\x1e';
inline constexpr char kSymbolMarkerEnd = '\x1f';
// The bytes a marker takes at most, with its NUL (a string value's size).
inline constexpr std::uint32_t kSymbolMarkerBytes = 32;

// How a ustack value is printed: bpftrace's modes (`raw` one address a line, `build_id`
// BUILDID 0xOFFSET a line, as bpftrace main prints them), and usym's symbol.
enum class SymbolForm : char {
  stack = 's',
  stack_perf = 'p',
  stack_raw = 'r',
  stack_build_id = 'b',  // each frame as its module's build id and file offset
  symbol = 'y',
};

// Makes the stack table (once per process; when a script that uses ustack as a value is
// lowered, never on a hit).
void stack_table_init();
// Whether a script of this process uses ustack or usym as values (stack_table_init ran):
// where probes are registered, the CFI tables are then prepared as for a ustack key.
bool stack_values_used();
// Writes the marker of `words` ([n, addresses...]) or of one address into `out` (at least
// kSymbolMarkerBytes); its length. A full stack table: an empty stack's marker.
std::uint32_t stack_marker(const std::uint64_t* words, SymbolForm form, char* out);
std::uint32_t symbol_marker(std::uint64_t addr, char* out);

// A marker of this process read back: its form and [n, addresses...] (at most `max`
// words). False when `s` is not a whole marker of this process (it is then a string). A
// stack marker of the process whose stacks were adopted (adopt_stacks) reads too.
bool read_marker(std::string_view s, SymbolForm& form, std::uint64_t* words, std::size_t max);

// The stack table for a reader in another process (hotprobe printing the maps a program
// left in their region: symbolize.h, publish_modules): appends this process's nonce, then
// [slot, n, addresses...] of every published slot, to `out`. Not on a hit.
void export_stacks(std::vector<std::uint64_t>& out);
// hotprobe's side: the words export_stacks wrote in another process. read_marker then
// reads that process's stack markers (its nonce) from them; a slot not among them (the
// program ended before it could write them) reads as the empty stack.
void adopt_stacks(std::span<const std::uint64_t> words);

// len(ustack): the frames of the stack value `s` (a marker), 0 for any other string.
std::int64_t stack_frame_count(std::string_view s);

struct Node;
struct Frame;
namespace nodes {
// ustack value: imm = SymbolForm | limit << 8.
std::uint32_t s_ustack_value(const Node* n, Frame& f, char* out);
// usym value: a the address.
std::uint32_t s_usym_value(const Node* n, Frame& f, char* out);
// len(ustack): a the stack value (a string).
std::int64_t i_stack_len(const Node* n, Frame& f);
}  // namespace nodes

}  // namespace hotprobe::script
