// The fuzz entry point of the script front end and evaluator, shared by the clang
// libFuzzer target (tests/security/script_fuzz_main.cc) and the replay test that runs in
// every build, sanitizers included (tests/security/script_fuzz_replay_test.cc).
//
// It never fails quietly: a script the front end accepts must lower, run every probe's
// action once (no registers) and print its maps; an accepted tree deeper than the parser's
// limits (script/parser.h) aborts. A crash or a sanitizer report is the bug.
#pragma once

#include <cstddef>
#include <string_view>

namespace hotprobe::script {

struct FuzzStats {
  std::size_t inputs = 0;
  std::size_t parsed = 0;   // no syntax error
  std::size_t checked = 0;  // no error at all: compiled and run
};

void fuzz_one(std::string_view source, FuzzStats* stats = nullptr);

}  // namespace hotprobe::script
