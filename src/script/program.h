// The script layer's face to the agent and the CLI: a bpftrace-style script, compiled.
//
//   script::CompileOptions opts;  opts.filename = "trace.bt";
//   auto prog = script::Program::compile(source, opts);   // errors: rendered, with caret
//   prog->bind(&sink);                                     // where printf/print output goes
//   for (i : uprobe/uretprobe probes) specs.push_back(prog->spec(i));
//   engine->attach(specs, BatchMode::all_or_nothing);
//   prog->run_begin();  ... timers: prog->run_interval(i) ...  prog->run_end();
//   sink.write(prog->print_maps());                        // the end-of-run map dump
//
// Threads: actions run on the probed threads concurrently; aggregation maps are
// per-thread and merged when printed, so a hit writes no cache line another thread
// writes. run_begin/run_end/run_interval/print_maps run on the caller's thread.
//
// Ownership: contract between src/script (implements) and src/agent, src/cli (use).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "hotprobe/probe.h"
#include "hotprobe/result.h"

namespace hotprobe::script {

enum class OutputFormat : std::uint8_t { text, json };

// Where a program's output goes; the agent implements it.
class Sink {
 public:
  virtual ~Sink() = default;
  // Output produced by an action (printf, print, time, map printing), already formatted
  // in the program's OutputFormat (one JSON object per line in json). Called on the
  // probed thread: must not block and should not allocate; what cannot be delivered is
  // counted as lost by the sink.
  virtual void write(std::string_view text) = 0;
  // exit() ran in an action (any thread, possibly several times).
  virtual void request_exit() = 0;
  // system() or cat() ran in an action (--unsafe): `text` is the command for /bin/sh -c or
  // the file's path, formatted on the probed thread. The hotprobe command runs it and
  // prints what it gives in order with the output written before and after it; the
  // traced process never forks or opens a file for it. Same rules as write(). A sink that
  // delivers no requests ignores them. `warning`: a runtime warning (an array index out
  // of bounds), for hotprobe's stderr as bpftrace prints its own; a sink that delivers no
  // requests writes it with the output.
  enum class Request : char { system = 's', cat = 'c', warning = 'w' };
  virtual void request(Request kind, std::string_view text) {
    if (kind == Request::warning) write(text);
  }
};

struct CompileOptions {
  std::string filename = "-e";  // for messages: "FILE:LINE:COL: error: ..."
  OutputFormat format = OutputFormat::text;
  std::vector<std::string> params;  // $1.. $N: the words after the script on the command line
  bool unsafe = false;              // --unsafe: signal(), system(), cat() (bpftrace's safe mode)
};

struct Probe {
  enum class Kind : std::uint8_t { begin, end, uprobe, uretprobe, interval };
  Kind kind = Kind::begin;
  std::string text;               // as written, expanded: "uprobe:/usr/lib/libc.so.6:malloc"
  std::string target;             // ProbeSpec::target form: "libc:malloc", "/p/a.out:f+4", "m:0x10"
  std::uint64_t interval_ns = 0;  // interval probes
  int line = 0, column = 0;       // where the probe is written
};

class Program {
 public:
  virtual ~Program() = default;

  // Parses and checks `source`. The error message is the rendered diagnostic(s):
  //   FILE:LINE:COL: error: MESSAGE
  //   <the source line>
  //         ^~~~
  //   (did you mean 'count'?)
  static Result<std::unique_ptr<Program>> compile(std::string_view source,
                                                  const CompileOptions& options = {});

  // Every probe of the script, in source order; several probes sharing one action block
  // are listed one by one.
  virtual std::span<const Probe> probes() const = 0;
  // The engine spec for uprobe/uretprobe probe `index`: target, handlers and cookie. The
  // Program outlives every attachment made with it.
  virtual ProbeSpec spec(std::size_t index) = 0;

  virtual void bind(Sink* sink) = 0;

  virtual void run_begin() = 0;
  virtual void run_end() = 0;
  virtual void run_interval(std::size_t index) = 0;  // index into probes()

  // Every non-empty map, as bpftrace prints them when it exits (text: the 0.17 layout,
  // with the trailing blank line; json: one object per map). Text starts with the "\n\n"
  // bpftrace's main() prints before its maps, maps come in name order, and a map left empty
  // by clear()/delete() is a blank line as in bpftrace; json omits empty maps.
  virtual std::string print_maps() = 0;

  // exit() has run in an action.
  virtual bool exited() const = 0;

  // Actions of uprobe/uretprobe probes run only while the program is active (the
  // default). The agent turns it off when its session stops tracing, and in a fork child
  // it does not follow: a hit then costs one relaxed load and returns, with no wrapper
  // around the program's handlers.
  virtual void set_active(bool active) = 0;
  // Empties every map (a followed fork child starts from zero, as a new process would).
  virtual void reset_maps() = 0;
  // Reads of the traced program's memory (*p, p->field, p[i]) that found nothing readable
  // and yielded 0 so far (bpftrace's failed probe_read reads 0 too).
  virtual std::uint64_t read_faults() const { return 0; }
};

struct Runtime;  // script/eval.h
// The Program over a lowered Runtime, as Program::compile makes it. The agent builds one
// itself so that it keeps the Runtime in reach (agent/map_data.h, OpenProgram).
std::unique_ptr<Program> program_of(std::unique_ptr<Runtime> rt);

}  // namespace hotprobe::script
