// What `hotprobe run` and `hotprobe attach` do before they start the program or inject
// into it: the script read and compiled here (its errors before anything runs), and the
// agent found.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "script/program.h"

namespace hp::cli {

// A script read and compiled here, as the agent will get it.
struct LoadedScript {
  std::string source;    // with the types its args and #includes need (script/check_args.h)
  std::string filename;  // the script file's name, or "-e"
  hotprobe::script::CompileOptions copts;
};

// Reads and compiles the script of `cmd` (-e `text`, or the file `file`), with the
// positional parameters and --unsafe of the command line; errors are printed: nullopt.
std::optional<LoadedScript> load_script(const char* cmd, const std::string& text,
                                        const std::string& file, const std::string& format,
                                        const std::vector<std::string>& params, bool unsafe);

// $HOTPROBE_AGENT, then next to hotprobe (the build tree), then the install layout; empty
// when none is there.
std::string find_agent();

}  // namespace hp::cli
