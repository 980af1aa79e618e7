// hotprobe: run bpftrace-style scripts on user-space probes of an unmodified program.
#include <sys/stat.h>
#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <fmt/format.h>

#include "cli/cli.h"
#include "cli/output_file.h"
#include "elf/dwarf.h"
#include "elf/source_frames.h"
#include "hotprobe/version.h"
#include "script/check_args.h"
#include "script/symbolize.h"

namespace {

constexpr const char* kFooter = R"(Exit status:
  0    success
  1    error: the script does not compile, a probe does not resolve, a file cannot be read
  2    usage: the command line is wrong
  run: the program's own exit status, or 128+N when a signal N killed it (as a shell
       reports it); 1 when the script or a probe failed before the program's main ran,
       or the program closed hotprobe's channel and could not have it back (the maps
       then hold what was counted until that moment).

Environment:
  HOTPROBE_MAP_MEMORY=MiB   run: the memory the maps share with hotprobe, which prints
                            them however the program ends (sparse; default 1024)
  HOTPROBE_SHARED_MAPS=0    run: maps travel over the channel only (lost if the program
                            dies abnormally)
  HOTPROBE_RUN_RENDEZVOUS=0 run: no socket where a traced process that closed every
                            descriptor gets hotprobe's channel back (it then stops
                            tracing there, and hotprobe says so)
  HOTPROBE_RETURN_PROBES=auto|ret|hijack
                            run: how every return probe catches the return (ret: a
                            probe on each ret instruction, the return address untouched)
  HOTPROBE_SIGNAL=N         run: the real-time signal that moves the program's threads
                            out of code being patched (default SIGRTMAX-3)
  HOTPROBE_DEBUG=1          run: each probe site says on stderr whether it is a jump or
                            an int3, and why
  HOTPROBE_BATCH_THREADS=2  run: batches of 1,024 probes or more resolve on two threads

Examples:
  hotprobe run -e 'uprobe:libc:malloc { @[arg0] = count(); }' -- ls -l
  hotprobe -e 'uprobe:libc:malloc { @ = count(); }' -c 'ls -l'   (bpftrace's form of run)
  hotprobe -e 'uprobe:libc:malloc { @ = count(); }' -p 1234      (bpftrace's form of attach)
  hotprobe run trace.bt -o json --output out.json -- ./server --port 80
  hotprobe list libc 'str*'
  hotprobe list /usr/bin/ls)";

// bpftrace's -c 'CMD ARGS': split at whitespace, no shell (no quotes, no expansion).
std::vector<std::string> split_command(const std::string& text) {
  std::vector<std::string> words;
  std::istringstream in(text);
  for (std::string w; in >> w;)
    words.push_back(w);
  return words;
}

// The process a thread `pid` belongs to (its Tgid), or 0 if unknown.
int thread_group_of(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("Tgid:", 0) == 0) return std::atoi(line.c_str() + 5);
  }
  return 0;
}

int cli_main(int argc, char** argv) {
  // bpftrace's top level: `hotprobe -e SCRIPT -c CMD` and `hotprobe FILE.bt -c CMD` are
  // `hotprobe run ...`; `hotprobe -e SCRIPT -p PID` is `hotprobe attach ...`; `hotprobe -l`
  // is `hotprobe list`.
  std::vector<char*> args(argv, argv + argc);
  static char kRun[] = "run";
  static char kAttach[] = "attach";
  if (argc > 1) {
    bool has_c = false, has_p = false;
    for (int i = 1; i < argc && std::strcmp(argv[i], "--") != 0; ++i) {
      has_c |= std::strcmp(argv[i], "-c") == 0;
      has_p |= std::strcmp(argv[i], "-p") == 0 || std::strcmp(argv[i], "--pid") == 0;
    }
    const std::string first = argv[1];
    const bool subcommand = first == "run" || first == "attach" || first == "list";
    // Any of bpftrace's options first (-e, -I DIR, --include FILE, --unsafe, -o ...) with
    // -c or -p somewhere: the run or the attach.
    const bool script_first = first == "-e" || first == "-c" || first == "-p" ||
                              (!subcommand && first != "-l" && first != "-lv" && first != "-h" &&
                               first != "--help" && (has_c || has_p));
    if (script_first) args.insert(args.begin() + 1, has_p && !has_c ? kAttach : kRun);
    // bpftrace's `-l PATTERN` and `-lv PATTERN` are `hotprobe list [-v] PATTERN`.
    static char kList[] = "list";
    static char kVerbose[] = "-v";
    if (first == "-l" || first == "-lv") {
      args[1] = kList;
      if (first == "-lv") args.insert(args.begin() + 2, kVerbose);
    }
  }
  argc = static_cast<int>(args.size());
  argv = args.data();

  // Everything after the first "--" is the traced program's command line, untouched.
  std::vector<std::string> command;
  int own = argc;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--") == 0) {
      own = i;
      for (int j = i + 1; j < argc; ++j)
        command.emplace_back(argv[j]);
      break;
    }
  }

  CLI::App app{
      "hotprobe: bpftrace-style scripts on user-space probes, without the kernel's traps."};
  app.name("hotprobe");
  app.footer(kFooter);
  app.set_version_flag("-V,--version", fmt::format("hotprobe v{}", hotprobe::version()));
  app.require_subcommand(1);

  hp::cli::RunOptions run;
  auto* run_cmd =
      app.add_subcommand("run", "Run PROGRAM with the script's probes attached before its main.");
  run_cmd->footer(
      "Usage: hotprobe run [-e 'SCRIPT' | SCRIPT_FILE] [PARAMS...] [-o text|json] [--output "
      "FILE] [--follow-forks] [--unsafe] -- PROGRAM [ARGS...]\n"
      "       hotprobe run [-e 'SCRIPT' | SCRIPT_FILE] [PARAMS...] [OPTIONS] -c 'PROGRAM "
      "ARGS...'\n"
      "(PARAMS are the script's $1, $2, ...; $# is how many)\n"
      "(-c is bpftrace's: split at whitespace, no shell; `hotprobe -e ... -c ...` works too)\n\n"
      "Output: printf/print output and the maps (on interval probes, exit(), the program's "
      "end and Ctrl-C) go to hotprobe's stdout or FILE; PROGRAM's stdin, stdout and stderr "
      "are its own. exit() in the script ends PROGRAM too, as bpftrace's -c does (SIGTERM, "
      "SIGKILL 2 s later).\n"
      "Exit status: PROGRAM's (128+N if signal N killed it; 0 when exit() ended it); 1 if "
      "the script or a probe "
      "failed (the program is then not run past its start), or if PROGRAM cannot take the "
      "agent (statically linked, set-user-ID: refused before it starts); 2 for a bad "
      "command line.");
  run_cmd->add_option("-e", run.script_text, "The script text");
  std::string run_c;
  run_cmd->add_option("-c", run_c,
                      "The program and its arguments in one word, split at whitespace "
                      "(bpftrace's -c; instead of -- PROGRAM ARGS...)");
  // The words after the script: a script file (without -e), then the positional
  // parameters $1, $2, ... as bpftrace takes them.
  std::vector<std::string> run_words, att_words;
  run_cmd->add_option("script_file", run_words,
                      "A script file (instead of -e), then the script's positional parameters "
                      "$1, $2, ...");
  run_cmd->add_flag("--unsafe", run.unsafe,
                    "Allow signal(), system() and cat(), as bpftrace's --unsafe");
  run_cmd->add_option("-o,--format", run.format, "Output format")
      ->check(CLI::IsMember({"text", "json"}));
  run_cmd->add_option("--output", run.output, "Write the tracing output to FILE");
  run_cmd->add_flag("--follow-forks", run.follow_forks,
                    "Trace forked children too, and what they exec (pid tells them apart; "
                    "HOTPROBE_FOLLOW_CHILD_EXECS=0: a child's exec ends its tracing)");

  hp::cli::AttachOptions att;
  auto* attach_cmd = app.add_subcommand(
      "attach", "Run the script in a running process (the agent is injected with ptrace).");
  attach_cmd->footer(
      "Usage: hotprobe attach -p PID [-e 'SCRIPT' | SCRIPT_FILE] [PARAMS...] [-o text|json] "
      "[--output FILE] [--duration SECONDS] [--unsafe]\nCtrl-C (or --duration, or exit() in the "
      "script) stops: END "
      "runs, the maps print, every probe is removed and the process runs on. How long the "
      "process was stopped to load the agent is reported on stderr.");
  attach_cmd->add_option("-p,--pid", att.pid, "The process")->required();
  attach_cmd->add_option("-e", att.script_text, "The script text");
  attach_cmd->add_option("script_file", att_words,
                         "A script file (instead of -e), then the script's positional "
                         "parameters $1, $2, ...");
  attach_cmd->add_flag("--unsafe", att.unsafe,
                       "Allow signal(), system() and cat(), as bpftrace's --unsafe");
  attach_cmd->add_option("-o,--format", att.format, "Output format")
      ->check(CLI::IsMember({"text", "json"}));
  attach_cmd->add_option("--output", att.output, "Write the tracing output to FILE");
  attach_cmd->add_option("--duration", att.duration, "Stop tracing after SECONDS")
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            char* end = nullptr;
            const double v = std::strtod(text.c_str(), &end);
            if (end == text.c_str() || *end != '\0' || !(v > 0) || v > 1e9) {
              return "'" + text +
                     "' is not a positive number of seconds (such as 10 or 0.5); leave "
                     "--duration out to trace until Ctrl-C, exit() or the process's end";
            }
            return {};
          },
          "SECONDS"));

  std::string module, glob;
  auto* list_cmd = app.add_subcommand(
      "list", "List the functions that can be probed, as bpftrace -l does (uprobe:PATH:FUNC).");
  list_cmd->footer(
      "Usage: hotprobe list MODULE_OR_PROGRAM [GLOB]\n\n"
      "MODULE_OR_PROGRAM: a path, a program found in PATH, or a library's short name "
      "(libc, libssl.so.3) found as the dynamic loader would.\nGLOB: fnmatch(3) pattern on "
      "the function names (default: every function).\n\n"
      "bpftrace's patterns work too:\n"
      "  hotprobe list 'usdt:/usr/bin/python3:*'   USDT probes of a file\n"
      "  hotprobe list -v 'uprobe:./prog:func'     a function's parameters (needs -g)\n"
      "  hotprobe list -p PID 'uprobe:*:mall*'     in the files a process maps");
  list_cmd->add_option("module", module, "A module path, program or library name");
  list_cmd->add_option("glob", glob, "Function name pattern");
  bool list_verbose = false;
  int list_pid = 0;
  list_cmd->add_flag("-v,--verbose", list_verbose,
                     "Show each function's parameters from DWARF, as bpftrace -lv does");
  list_cmd->add_option("-p,--pid", list_pid, "List the functions of the files process PID maps")
      ->check(CLI::PositiveNumber);

  // bpftrace's --debuginfo DIR[:DIR...]: more places for separate debug files (args,
  // source-line probes, list -v); repeatable.
  std::vector<std::string> debuginfo;
  for (CLI::App* cmd : {run_cmd, attach_cmd, list_cmd}) {
    cmd->add_option("--debuginfo", debuginfo,
                    "Also look for separate debug files in DIR (DIR[:DIR...]; repeatable; a "
                    "relative DIR is below each file's directory), as bpftrace's --debuginfo")
        ->type_name("DIR")
        ->allow_extra_args(false);  // one DIR per --debuginfo: what follows is not its
  }

  // bpftrace's -I DIR and --include FILE: headers for the script's C declarations.
  std::vector<std::string> include_dirs, include_files;
  for (CLI::App* cmd : {run_cmd, attach_cmd}) {
    cmd->add_option("-I", include_dirs,
                    "Also look for #include headers in DIR (repeatable), as bpftrace's -I")
        ->type_name("DIR")
        ->allow_extra_args(false);
    cmd->add_option("--include", include_files,
                    "#include FILE before the script (repeatable), as bpftrace's --include")
        ->type_name("FILE")
        ->allow_extra_args(false);
  }

  // bpftrace's --usdt-file-activation (raise a USDT probe's semaphore in every process
  // that maps the file): hotprobe raises it in every process it traces, and touches no
  // other, so the flag is accepted and changes nothing.
  bool usdt_file_activation = false;
  for (CLI::App* cmd : {run_cmd, attach_cmd}) {
    cmd->add_flag("--usdt-file-activation", usdt_file_activation,
                  "Accepted for bpftrace's scripts: USDT semaphores are raised in every "
                  "process hotprobe traces");
  }

  // A program named without '--' after -e: its own options would be read as hotprobe's
  // (`-o`), so it is never guessed; the message says how to write it.
  const auto program_without_dashes = [&](const std::string& word) {
    std::fprintf(stderr,
                 "hotprobe run: -e gives the script, so '%s' is not a script file; to run it "
                 "as the program, put '--' before it or use -c:\n"
                 "  hotprobe run -e 'SCRIPT' -- %s [ARGS...]\n"
                 "  hotprobe run -e 'SCRIPT' -c '%s [ARGS...]'\n"
                 "(words after the script are its parameters $1, $2, ... when the program is "
                 "named with '--' or -c)\n",
                 word.c_str(), word.c_str(), word.c_str());
    return hp::cli::kExitUsage;
  };
  try {
    app.parse(own, argv);
  } catch (const CLI::ParseError& e) {
    if (run_cmd->parsed() && dynamic_cast<const CLI::ExtrasError*>(&e) != nullptr) {
      if (!run.script_text.empty() && !run.script_file.empty())
        return program_without_dashes(run.script_file);
      if (!run.script_file.empty() && !run_cmd->remaining().empty()) {
        const std::string word = run_cmd->remaining().front();
        std::fprintf(stderr,
                     "hotprobe run: '%s' follows the script file '%s'; name the program "
                     "after '--' or with -c:\n"
                     "  hotprobe run %s -- PROGRAM [ARGS...]\n"
                     "  hotprobe run %s -c 'PROGRAM ARGS...'\n",
                     word.c_str(), run.script_file.c_str(), run.script_file.c_str(),
                     run.script_file.c_str());
        return hp::cli::kExitUsage;
      }
    }
    int rc = app.exit(e);
    return rc == 0 ? 0 : hp::cli::kExitUsage;
  }

  for (auto [text, file, words, params] :
       {std::tuple{&run.script_text, &run.script_file, &run_words, &run.params},
        std::tuple{&att.script_text, &att.script_file, &att_words, &att.params}}) {
    if (text->empty() && !words->empty()) {
      *file = words->front();
      words->erase(words->begin());
    }
    *params = *words;
  }

  if (!debuginfo.empty()) {
    std::vector<std::string> dirs;
    for (const std::string& arg : debuginfo) {
      std::stringstream parts(arg);
      for (std::string dir; std::getline(parts, dir, ':');) {
        if (dir.empty()) continue;
        struct stat st;  // a relative DIR is below each file's directory: not checked here
        if (dir.front() == '/' && (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))) {
          std::fprintf(stderr,
                       "hotprobe: --debuginfo %s: no such directory (give the directory "
                       "that holds the separate debug files)\n",
                       dir.c_str());
          return hp::cli::kExitUsage;
        }
        dirs.push_back(dir);
      }
    }
    hp::elf::set_debuginfo_dirs(std::move(dirs));
  }

  for (const std::string& dir : include_dirs) {
    struct stat st;
    if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      std::fprintf(stderr,
                   "hotprobe: -I %s: no such directory (give the directory that holds the "
                   "headers the script includes)\n",
                   dir.c_str());
      return hp::cli::kExitUsage;
    }
  }
  if (!include_dirs.empty() || !include_files.empty())
    hotprobe::script::set_include_options(include_dirs, include_files);

  // --output is checked before anything starts (a program, an injection); its open checks
  // again on the descriptor.
  const std::string& output = *run_cmd ? run.output : att.output;
  if ((*run_cmd || *attach_cmd) && !output.empty() && !hp::cli::output_path_acceptable(output))
    return hp::cli::kExitError;

  if (*run_cmd) {
    if (!run.script_text.empty() && !run.script_file.empty())
      return program_without_dashes(run.script_file);
    if (run.script_text.empty() && run.script_file.empty()) {
      std::fprintf(stderr,
                   "hotprobe run: no script: give it with -e 'SCRIPT' or as a file "
                   "(hotprobe run trace.bt -- PROGRAM)\n"
                   "Run with --help for more information.\n");
      return hp::cli::kExitUsage;
    }
    if (!run_c.empty()) {
      if (!command.empty()) {
        std::fprintf(stderr,
                     "hotprobe run: the program is given twice (-c and after '--'): keep one\n");
        return hp::cli::kExitUsage;
      }
      command = split_command(run_c);
      if (command.empty()) {
        std::fprintf(stderr, "hotprobe run: -c is empty: -c 'PROGRAM ARGS...'\n");
        return hp::cli::kExitUsage;
      }
    }
    if (command.empty() && !run.params.empty()) {
      // A program named without '--' (the words after the script are $1, $2, ... only
      // when the program is named with '--' or -c).
      if (run.script_file.empty()) return program_without_dashes(run.params.front());
      std::fprintf(stderr,
                   "hotprobe run: '%s' follows the script file '%s'; name the program "
                   "after '--' or with -c:\n"
                   "  hotprobe run %s -- PROGRAM [ARGS...]\n"
                   "  hotprobe run %s -c 'PROGRAM ARGS...'\n",
                   run.params.front().c_str(), run.script_file.c_str(), run.script_file.c_str(),
                   run.script_file.c_str());
      return hp::cli::kExitUsage;
    }
    if (command.empty()) {
      std::fprintf(stderr,
                   "hotprobe run: name the program after '--' or with -c: hotprobe run -e "
                   "'SCRIPT' -- PROGRAM [ARGS...]\n");
      return hp::cli::kExitUsage;
    }
    run.command = std::move(command);
    return hp::cli::run(run);
  }
  if (*attach_cmd && command.empty()) {
    if (att.script_text.empty() == att.script_file.empty()) {
      std::fprintf(stderr,
                   "hotprobe attach: give the script either with -e 'SCRIPT' or as a file\n");
      return hp::cli::kExitUsage;
    }
    if (att.pid <= 0) {
      std::fprintf(stderr, "hotprobe attach: -p takes a process ID (a positive number)\n");
      return hp::cli::kExitUsage;
    }
    if (const int tgid = thread_group_of(att.pid); tgid > 0 && tgid != att.pid) {
      std::fprintf(stderr,
                   "hotprobe attach: %d is a thread of process %d, not a process: attach to "
                   "the process (hotprobe attach -p %d); its probes see every thread, and "
                   "`tid` tells them apart\n",
                   att.pid, tgid, tgid);
      return hp::cli::kExitUsage;
    }
    return hp::cli::attach_command(att);
  }
  if (!command.empty()) {
    std::fprintf(stderr, "hotprobe: '--' and a program are for 'hotprobe run'\n");
    return hp::cli::kExitUsage;
  }
  if (*list_cmd) {
    if (module.empty() && list_pid <= 0) {
      std::fprintf(stderr,
                   "hotprobe list: name a module or program: listing every module of the "
                   "system would be long and slow.\n"
                   "  hotprobe list libc 'mall*'      a library by its short name\n"
                   "  hotprobe list /usr/bin/ls       a file\n"
                   "  hotprobe list ls                a program in PATH\n");
      return hp::cli::kExitUsage;
    }
    return hp::cli::list(module, glob, list_verbose, list_pid);
  }
  return hp::cli::kExitUsage;
}

}  // namespace

// An exception that reaches here (memory exhausted, a library's throw the subcommand did
// not expect) is an error with its message, never std::terminate's abort.
int main(int argc, char** argv) {
  // show_debug_info: stack frames name their source places from DWARF, read here (libdw).
  hotprobe::script::set_source_lookup([](const std::string& module, std::uint64_t off) {
    std::vector<hotprobe::script::Symbolizer::SourcePlace> out;
    for (auto& f : hp::elf::source_frames(module, off))
      out.push_back({std::move(f.function), std::move(f.file), f.line});
    return out;
  });
  try {
    return cli_main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hotprobe: error: %s\n", e.what());
  } catch (...) {
    std::fprintf(stderr, "hotprobe: error: an unknown exception\n");
  }
  return hp::cli::kExitError;
}
