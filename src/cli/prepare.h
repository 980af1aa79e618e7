// What `hotprobe run` and `hotprobe attach` do before they start the program or inject
// into it: the script read and compiled here (its errors before anything runs), and the
// agent found.
#pragma once

#include <string>

#include "script/program.h"

namespace hp::cli {

// Reads and compiles the script (errors are printed); false on error.
bool load_script(const char* cmd, const std::string& text, const std::string& file,
                 const std::string& format, std::string& source, std::string& filename,
                 hotprobe::script::CompileOptions& copts);

// $HOTPROBE_AGENT, then next to hotprobe (the build tree), then the install layout; empty
// when none is there.
std::string find_agent();

}  // namespace hp::cli
