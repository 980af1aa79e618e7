// hotprobe's probe engine: entry and return probes on the running code of this process.
//
//   #include <hotprobe/probe.h>
//
//   std::atomic<long> calls;   // or, better, a per-thread counter
//   auto engine = hotprobe::Engine::create().value();
//   hotprobe::ProbeSpec spec;
//   spec.target = "libc:malloc";                       // module:symbol[+off] | module:0xADDR
//   spec.on_entry = [](hotprobe::Hit& h) { ++*static_cast<std::atomic<long>*>(h.cookie); };
//   spec.cookie = &calls;
//   auto handles = engine->attach(spec);                // Result<std::vector<Handle>>
//   ...
//   engine->detach(*handles);                           // waits for running handlers
//
// Handlers run on the probed thread, inside the engine's read-side section: they may
// block (take a lock, sleep, fault a page in); detaching waits for handlers that are
// running and frees nothing they use before they return. A probe hit inside a handler
// (a handler that calls a probed malloc) skips the handlers and counts a miss.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "hotprobe/api.h"
#include "hotprobe/regs.h"
#include "hotprobe/result.h"

namespace hotprobe {

// The hot-path protection scheme (the debate of the uprobes scalability work). Each has
// a row in the library's scheme table (src/sync/schemes.h), which names them.
enum class Scheme : std::uint8_t {
  tasks_trace,   // default: per-thread nesting counter, compiler barrier only
  srcu,          // SRCU with a full fence on the read side
  srcu_fast,     // SRCU without reader fences; grace periods pay membarrier
  percpu_rwsem,  // per-CPU reader counts gated by an rcu_sync-like state
  refcount,      // one atomic count written by every reader (the baseline)
  rwlock,        // std::shared_mutex (the original tree lock)
};
HOTPROBE_API std::span<const Scheme> all_schemes() noexcept;  // in enum order
HOTPROBE_API std::string_view to_string(Scheme s) noexcept;
HOTPROBE_API Result<Scheme> parse_scheme(std::string_view name);

// What a handler sees.
struct Hit {
  Regs* regs = nullptr;             // the probed thread's registers; arg(i), ret(), ip, sp
  void* cookie = nullptr;           // the consumer's cookie (ProbeSpec::cookie)
  std::uint64_t* data = nullptr;    // entry: store for the return handler; return: read it
  std::uint64_t probe_address = 0;  // the probed instruction's address
};
using Handler = void (*)(Hit& hit);
using Filter = bool (*)(const Hit& hit);

// How a return probe catches the return (ProbeSpec::return_mode).
enum class ReturnMode : std::uint8_t {
  // ret_instructions for functions of a Go program or library (a module whose symbol
  // table has runtime.goexit or runtime.morestack), hijack elsewhere.
  automatic,
  // The entry swaps the return address for a trampoline's: one return instance per call
  // (Hit::data is per call), every return path caught, tail calls included.
  hijack,
  // An instruction probe on each `ret` of the function, never a changed return address
  // nor an int3 (for runtimes that walk their stacks); Hit::data points at a zeroed word.
  // Refused where a ret cannot take a jump.
  ret_instructions,
};

// How a probe's bytes are patched (ProbeSpec::patch).
enum class PatchMode : std::uint8_t {
  automatic,  // a 5-byte jump where one can be placed, else an int3 (a trap per hit)
  jump_only,  // a jump or an error: never a trap (Go code, threads that block SIGTRAP)
  int3,       // always an int3 (tests, comparisons)
};

struct ProbeSpec {
  // What to probe, "MODULE:WHAT":
  //   MODULE:symbol           a function's entry (an IFUNC such as libc's strlen: the
  //                           implementation the loader picked for this process)
  //   MODULE:symbol+OFFSET    OFFSET bytes into it (decimal or 0x hex), an instruction start
  //   MODULE:0xADDR           the virtual address nm(1) prints for the file (as bpftrace
  //                           reads it), inside a function and at an instruction start
  //   MODULE:fileoff:0xOFF    a file offset, as the kernel's uprobe_events take it
  //   MODULE:handle_*         a glob: one probe per matching function
  //   MODULE:usdt:PROVIDER:NAME  a USDT probe (<sys/sdt.h>): an instruction probe at every
  //                           site of every note that matches (a probe inlined in several
  //                           places has several); usdt:NAME any provider, usdt:* all;
  //                           wildcards in both. Entry handlers only. A semaphore the
  //                           note names (PROVIDER_NAME_ENABLED()) is raised while probed.
  //   @0xADDR                 an address in this process (a function's address, plus an
  //                           offset): its module and file offset, as MODULE:fileoff:0xOFF
  // The instruction start is checked by decoding from the function's first byte; an
  // address in no function is refused, except in a stripped file (no symbol table), where
  // it is taken as given. Fragments of functions (NAME.cold, NAME.cold.N: code GCC moved
  // out of line, entered by a jump) are not functions: globs skip them unless the
  // pattern names them (".cold"); named explicitly, an entry probe there is an instruction
  // probe and a return probe is refused. MODULE: a path (symlinks followed: the file they
  // lead to), a file name or soname ("libc.so.6"), a short name ("libc"), the name the
  // program was started as or a command in PATH, or empty for the executable.
  std::string target;
  Handler on_entry = nullptr;
  Handler on_return = nullptr;  // a return probe (only at a function's entry)
  Filter filter = nullptr;      // false: neither handler runs for this call
  void* cookie = nullptr;
  PatchMode patch = PatchMode::automatic;
  // The older spelling of `patch`, read only while `patch` is automatic: allow_int3 =
  // false is jump_only, force_int3 = true is int3; both at once contradict each other and
  // the spec is refused.
  bool allow_int3 = true;
  bool force_int3 = false;
  // true: xmm0-15 are saved around the handlers unless the engine proves, by decoding
  // them (and what they call directly), that none writes a vector register; a handler
  // that calls through a pointer or into another library gets them saved. false: the
  // caller promises the handlers write none (nothing is saved, nothing is checked).
  bool vector_registers = true;
  // How on_return catches the return (see ReturnMode). EngineOptions::return_mode, when
  // set, overrides it for every probe of the engine.
  ReturnMode return_mode = ReturnMode::automatic;
};

// One attached consumer on one site.
struct Handle {
  std::uint64_t id = 0;
  explicit operator bool() const noexcept { return id != 0; }
  bool operator==(const Handle&) const = default;
};

enum class BatchMode : std::uint8_t {
  best_effort,     // a bad spec fails alone; the others attach
  all_or_nothing,  // any failure attaches nothing
};

// Counters. "process": every engine of the process together (and the engine's internal
// probes: the module watcher, the unwinder hooks), so two engines read the same value;
// "engine": this engine's own.
struct Stats {
  std::uint64_t hits = 0;                 // process: handler invocations, entry and return
  std::uint64_t misses_recursion = 0;     // process: hits inside a handler, skipped
  std::uint64_t misses_return_stack = 0;  // process: return probes skipped, stack full
  std::uint64_t sites_jmp = 0;            // process: sites patched with a 5-byte jump
  std::uint64_t sites_int3 = 0;           // process: sites in int3 mode
  // engine: attached consumers (a transaction's staged changes count from its end)
  std::uint64_t consumers = 0;
  std::uint64_t sync_core_rounds = 0;  // process: cross-modifying-code serializations
  // engine: grace periods its detach, sync and end_transaction waited for
  std::uint64_t grace_periods = 0;
  std::uint64_t zombie_sites = 0;  // process: detached sites kept for late returns
  // process: hits skipped because the thread was doing hotprobe's own work (its threads,
  // an engine's attach and detach), which no handler must see.
  std::uint64_t skipped_own = 0;
};

struct EngineOptions {
  Scheme scheme = Scheme::tasks_trace;
  unsigned return_stack_depth = 64;  // return instances per thread; deeper calls miss
  // Failures after attach returned: a probe waiting for its library that cannot be
  // applied when the library is loaded (it stays pending). Called on the thread that
  // loaded the library, inside dlopen and with the engine's lock held: record the error,
  // do not call the Engine. Null: the message goes to stderr.
  void (*on_error)(const Error& error, void* cookie) = nullptr;
  void* on_error_cookie = nullptr;

  // The settings below each have an environment variable, read by
  // options_from_environment() (never by the engine): the agent, and the `hotprobe`
  // command through it, call it so that an unmodified program's settings come from there.
  //
  // 1: a batch runs on the calling thread. 2 or more: a batch of 1,024 specs or more takes
  // a second thread for resolving and building (off by default: on 2-CPU machines one
  // thread did as well with half the CPU). 0: 1. $HOTPROBE_BATCH_THREADS.
  unsigned batch_threads = 0;
  // Each site built says on stderr whether it is a jump or an int3 (and why), each internal
  // probe whether it attached. For the whole process from this engine's creation on (the
  // sites are shared). $HOTPROBE_DEBUG, set to anything.
  bool debug = false;
  // Overrides every spec's ProbeSpec::return_mode. Unset: each spec's.
  // $HOTPROBE_RETURN_PROBES = auto | ret | hijack.
  std::optional<ReturnMode> return_mode;
  // The real-time signal that moves threads out of bytes being patched (SIGRTMIN..
  // SIGRTMAX, one the program neither handles nor ignores). One per process: it is
  // installed with the first patch, and an engine that asks for another one after that is
  // refused. 0: SIGRTMAX-3, or the highest free one. $HOTPROBE_SIGNAL.
  int move_signal = 0;
};

// `base` with each setting it leaves at its default (batch_threads 0, debug false,
// return_mode unset, move_signal 0) taken from its environment variable, when that is set
// (a value in `base` wins): HOTPROBE_BATCH_THREADS, HOTPROBE_DEBUG, HOTPROBE_RETURN_PROBES,
// HOTPROBE_SIGNAL. A bad value is an error (Errc::invalid_argument, or Errc::busy for a
// signal this process already handles) naming the variable and the values it takes.
// Engine::create reads no variable: an embedding that wants them calls this first,
//   auto engine = hotprobe::Engine::create(hotprobe::options_from_environment().value());
HOTPROBE_API Result<EngineOptions> options_from_environment(EngineOptions base = {});

// The real-time signal the engine sends a running thread to move it out of bytes being
// patched (SIGRTMAX-3, or EngineOptions::move_signal). A thread that blocks it
// while it runs keeps attach/detach from completing (the batch fails after 1 s): threads that block
// every signal (reporters, workers) should leave this one open.
HOTPROBE_API int reserved_signal() noexcept;

class HOTPROBE_API Engine {
 public:
  static Result<std::unique_ptr<Engine>> create(EngineOptions options = {});
  ~Engine();  // detaches every probe it attached
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  Scheme scheme() const noexcept;

  // One spec: the handles of every site it matched.
  Result<std::vector<Handle>> attach(const ProbeSpec& spec);
  // A batch: one patch transaction (three core serializations in all) and no grace
  // period on the caller's path. Results are per spec, in order.
  std::vector<Result<std::vector<Handle>>> attach(std::span<const ProbeSpec> specs,
                                                  BatchMode mode = BatchMode::best_effort);

  // Detach and wait: when this returns no handler of these consumers runs or will run.
  Result<void> detach(std::span<const Handle> handles);
  Result<void> detach(Handle handle) { return detach(std::span<const Handle>(&handle, 1)); }
  // Detach without waiting; sync() then waits once for every earlier detach_nosync.
  Result<void> detach_nosync(std::span<const Handle> handles);
  void sync();

  // A transaction, the shape of Frida's Interceptor transactions: between
  // begin_transaction() and the matching end_transaction(), this engine's attach and
  // detach calls (from any thread) are staged, and the outermost end_transaction()
  // applies them all in one patch transaction of the registry, with one grace period
  // (when something was detached). Calls nest: only the outermost end applies.
  //
  // A staged call reports its own errors (resolving, building, an overlap with a probe
  // staged earlier in the transaction: what it staged is rolled back) and hands out its
  // handles at once. Until the outermost end no handler of a staged attach runs and a
  // staged detach's handlers go on running; detach() does not wait (the end does).
  // Detaching a handle attached in the same open transaction cancels it: its handlers
  // never run. Another engine's attach of a place this transaction staged is refused
  // (Errc::busy) until the transaction ends.
  //
  // end_transaction() without a begin is an error. When the patch at the outermost end
  // fails, the probes on the new sites are dropped (their handles are no longer
  // attached), the rest (the detaches, the probes on sites patched before) is applied,
  // and the error says so. The destructor ends a transaction left open.
  void begin_transaction();
  Result<void> end_transaction();

  Stats stats() const;

  struct Impl;

 private:
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hotprobe
