// config = { ... } blocks: the settings hotprobe honours, the BPF sizing settings it
// accepts with no effect, and a clear refusal of the rest.
#include <gtest/gtest.h>

#include <string>

#include "script/ast.h"
#include "script/check.h"
#include "script/program.h"

namespace hotprobe::script {
namespace {

struct NullSink : Sink {
  std::string out;
  void write(std::string_view text) override { out += text; }
  void request_exit() override {}
};

std::string first_error(std::string_view src) {
  auto r = parse_and_check(src, "stdin");
  if (r.ok()) return "";
  const std::string& e = r.error().message();
  return e.substr(0, e.find('\n'));
}

TEST(ScriptConfig, PrintMapsOnExitFalseLeavesTheExitDumpEmpty) {
  auto p = Program::compile(
      "config = { print_maps_on_exit = false; BPFTRACE_LOG_SIZE = 1000000 }\n"
      "BEGIN { @a = count(); print(@a); }");
  ASSERT_TRUE(p.ok()) << p.error().message();
  NullSink sink;
  (*p)->bind(&sink);
  (*p)->run_begin();
  EXPECT_EQ(sink.out, "@a: 1\n");  // print() still prints
  EXPECT_EQ((*p)->print_maps(), "");
  auto q = Program::compile("config = { print_maps_on_exit = 1 }\nBEGIN { @a = count(); }");
  ASSERT_TRUE(q.ok());
  (*q)->run_begin();
  EXPECT_EQ((*q)->print_maps(), "\n\n@a: 1\n");
}

TEST(ScriptConfig, RefusalsNameWhatIsTaken) {
  EXPECT_EQ(first_error("config = { bad_config = raw }\nBEGIN { }"),
            "stdin:1:12-22: ERROR: config: 'bad_config' is not a setting hotprobe takes (it "
            "takes print_maps_on_exit, stack_mode, show_debug_info, missing_probes, "
            "max_strlen = 64, and accepts bpftrace's BPF sizing "
            "settings log_size, perf_rb_pages, max_bpf_progs, max_probes, on_stack_limit, "
            "max_type_res_iterations, which have no effect)");
  EXPECT_EQ(first_error("config = { max_strlen = 200 }\nBEGIN { }"),
            "stdin:1:25-28: ERROR: max_strlen: hotprobe's strings are 64 bytes (bpftrace's "
            "default); other lengths are not supported (use str(p, N) for shorter reads)");
  EXPECT_EQ(first_error("config = { max_strlen = 64 }\nBEGIN { }"), "");
  EXPECT_EQ(first_error("config = { print_maps_on_exit = maybe }\nBEGIN { }"),
            "stdin:1:33-38: ERROR: print_maps_on_exit is true, false, 1 or 0");
}

}  // namespace
}  // namespace hotprobe::script
