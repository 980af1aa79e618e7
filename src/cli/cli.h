// The `hotprobe` command's subcommands. Exit codes (kExit*) are part of the interface:
// scripts may rely on them (docs/design/agent.md, `hotprobe --help`).
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

#include "script/program.h"

namespace hp::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;  // a script, probe, file or system error
inline constexpr int kExitUsage = 2;  // bad command line

struct RunOptions {
  std::string script_text;  // -e
  std::string script_file;  // or a file
  std::string format = "text";
  std::string output;  // --output FILE; empty: stdout
  bool follow_forks = false;
  std::vector<std::string> command;  // PROGRAM ARGS...
  std::vector<std::string> params;   // $1.. $N: the words after the script
  bool unsafe = false;               // --unsafe
};

struct AttachOptions {
  int pid = 0;
  std::string script_text, script_file;
  std::string format = "text";
  std::string output;
  double duration = 0;              // seconds; 0: until Ctrl-C, exit() or the process's end
  std::vector<std::string> params;  // $1.. $N: the words after the script
  bool unsafe = false;              // --unsafe
};

// `hotprobe attach -p PID`: kExitOk when tracing ended (Ctrl-C, exit(), the process
// ended), kExitError when the script, the injection or a probe failed.
int attach_command(const AttachOptions& options);
// The attach itself, once the script compiled (attach.cc).
int attach(const AttachOptions& options, const std::string& source, const std::string& filename,
           const std::string& agent_path, int format);

// `hotprobe run`: the program's exit status (128+N when killed by signal N), or kExitError.
int run(const RunOptions& options);

// `hotprobe list [MODULE_OR_PROGRAM] [GLOB]`.
int list(const std::string& module, const std::string& glob);
// With -v (each function's parameters from DWARF, as bpftrace -lv) and -p PID (the files
// process PID maps; MODULE may then be empty or '*').
int list(const std::string& module, const std::string& glob, bool verbose, int pid);

// A system() or cat() request of a script run with --unsafe (run.cc): what it prints, run
// in hotprobe; and whether one from `pid` (its sender's uid `sender_uid`, -1 when not
// known) may run: only a process of hotprobe's own user's (said once on stderr when not).
std::string run_command_request(std::string_view payload, hotprobe::script::OutputFormat format);
bool request_from_own_user(pid_t pid, long sender_uid, const char* command);

// An executable named `name` in $PATH (a name with a '/' is returned as is); empty if none.
std::string find_in_path(const std::string& name);

}  // namespace hp::cli
