// The file behind `--output FILE`. hotprobe runs as root, often in shared directories
// (/tmp), so the file is opened as a careful root process opens a path another user may
// control: never through a symbolic link, never a FIFO or device (no blocking), only a
// regular file with one link that the caller owns, created 0600 when it is new, and
// truncated only after those checks (docs/design/security.md, "Which files root opens").
#pragma once

#include <cstdio>
#include <string>

namespace hp::cli {

// The opened file (close-on-exec, blocking writes), or null with errno set, after a line
// on stderr saying what is wrong with `path` and what to do instead.
std::FILE* open_output_file(const std::string& path);

// The same rules, checked on the path as it is now (lstat) without opening or creating
// anything: false, after the same message, if open_output_file would refuse it. The
// command checks early, before it starts a program or injects into one; the open checks
// again on the descriptor.
bool output_path_acceptable(const std::string& path);

}  // namespace hp::cli
