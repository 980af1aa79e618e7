// Checks on the program `hotprobe run` is about to start, made before it starts: a program
// the preloaded agent cannot enter would otherwise run untraced to its end.
#pragma once

#include <string>

namespace hp::cli {

// True if `program` (a path, as exec will run it) can take the preloaded agent. Otherwise
// false, after a message on stderr naming the reason and what to do instead:
//   - a statically linked ELF (no PT_INTERP: pure Go, busybox-static, static-pie): no
//     dynamic loader reads LD_PRELOAD, and no dlopen is there for `attach` either;
//   - not an x86-64 ELF (32-bit, another machine), or linked against musl (the agent is a
//     glibc library);
//   - set-user-ID or set-group-ID to another user or group than the caller's: the kernel
//     runs it in secure-execution mode, where the loader ignores LD_PRELOAD.
// A script ("#!INTERP") is checked through its interpreter. Files that are none of these
// are left to exec, which reports its own errors.
bool preflight_program(const std::string& program);
// The same check, silent: the reason ("'PROGRAM' is ..."), or empty when `program` can
// take the preloaded agent.
std::string preload_refusal(const std::string& program);

}  // namespace hp::cli
