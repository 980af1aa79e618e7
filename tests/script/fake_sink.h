// The Sink of the script tests that run a Program in-process: it keeps what the script
// writes and counts its exit() requests.
#pragma once

#include <string>
#include <string_view>

#include "script/program.h"

namespace hotprobe::script {

struct FakeSink : Sink {
  std::string out;
  int exits = 0;
  void write(std::string_view text) override { out += text; }
  void request_exit() override { ++exits; }
};

}  // namespace hotprobe::script
