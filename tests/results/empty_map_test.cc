// The printers on maps that hold nothing, as bpftrace 0.17 prints them (checked on this
// machine with uprobes that never fire): a count() map without keys prints 0, in text and
// json, whether it was never hit or cleared; every other empty map is a blank line in text
// and nothing in json
// (avg and stats: two).
#include <gtest/gtest.h>

#include "script/output.h"

namespace hotprobe::script {
namespace {

TEST(EmptyMaps, KeylessCountPrintsZero) {
  std::string out;
  append_map(out, {"@n", ValueKind::count, {}}, {}, OutputFormat::text);
  EXPECT_EQ(out, "@n: 0\n");
  out.clear();
  append_map(out, {"@n", ValueKind::count, {}}, {}, OutputFormat::json);
  EXPECT_EQ(out, "{\"type\": \"map\", \"data\": {\"@n\": 0}}\n");
}

TEST(EmptyMaps, OtherEmptyMapsAreABlankLine) {
  for (ValueKind k : {ValueKind::sum, ValueKind::min, ValueKind::max, ValueKind::avg,
                      ValueKind::stats, ValueKind::hist, ValueKind::integer}) {
    std::string out;
    append_map(out, {"@x", k, {}}, {}, OutputFormat::text);
    // avg and stats end their block with one more newline, empty or not.
    const bool avg = k == ValueKind::avg || k == ValueKind::stats;
    EXPECT_EQ(out, avg ? "\n\n" : "\n") << static_cast<int>(k);
    out.clear();
    append_map(out, {"@x", k, {}}, {}, OutputFormat::json);
    EXPECT_EQ(out, "") << static_cast<int>(k);
  }
  std::string out;
  append_map(out, {"@k", ValueKind::count, {false}}, {}, OutputFormat::text);
  EXPECT_EQ(out, "\n");  // a keyed count map
}

}  // namespace
}  // namespace hotprobe::script
