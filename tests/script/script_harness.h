// A compiled script driven by fake hits, for the script layer's tests: the registers of
// each hit point at this test program's own data, so reads of the traced program's
// memory read it; first_line() is the first line of a script's check errors.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "script/check.h"
#include "script/eval.h"
#include "script/program.h"

#include "fake_sink.h"

namespace hotprobe::script::harness {

struct Script {
  std::unique_ptr<Program> prog;
  FakeSink sink;
  explicit Script(std::string_view src, OutputFormat fmt = OutputFormat::text) {
    CompileOptions o;
    o.format = fmt;
    auto p = Program::compile(src, o);
    EXPECT_TRUE(p.ok()) << (p ? "" : p.error().message());
    if (p) {
      prog = std::move(*p);
      prog->bind(&sink);
    }
  }
  // Calls probe `i`'s handler as the engine would: arg0 = a0, arg1 = a1, retval = ret.
  void hit(std::size_t i, std::uint64_t a0 = 0, std::uint64_t a1 = 0, std::uint64_t ret = 0,
           std::uint64_t addr = 0) {
    ProbeSpec s = prog->spec(i);
    Regs r{};
    r.rdi = a0;
    r.rsi = a1;
    r.rax = ret;
    Hit h;
    h.regs = &r;
    h.cookie = s.cookie;
    h.probe_address = addr;
    if (s.on_entry) s.on_entry(h);
    if (s.on_return) s.on_return(h);
  }
  std::string maps() { return prog->print_maps(); }
};

inline std::string errors(std::string_view src) {
  auto r = parse_and_check(src, "stdin");
  return r.ok() ? "" : r.error().message();
}
inline std::string first_line(std::string_view src) {
  std::string e = errors(src);
  return e.substr(0, e.find('\n'));
}

}  // namespace hotprobe::script::harness
