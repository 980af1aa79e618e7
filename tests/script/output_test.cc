// Printers against goldens copied from bpftrace v0.17.0 on this machine, e.g.
//   bpftrace -e 'BEGIN { @h = hist(5); ... exit(); }'      and the same with -f json.
#include <gtest/gtest.h>

#include "script/output.h"

namespace hotprobe::script {
namespace {

Row row(std::vector<std::uint64_t> key, std::vector<std::uint64_t> value) {
  return Row{std::move(key), std::move(value)};
}
std::vector<std::uint64_t> str_key(std::string_view s) {
  std::vector<std::uint64_t> k(kStrWords);
  put_string(k.data(), s);
  return k;
}

std::vector<std::uint64_t> hist_of(std::initializer_list<std::int64_t> vs) {
  std::vector<std::uint64_t> b(kHistBuckets);
  for (auto v : vs)
    ++b[hist_bucket(v)];
  return b;
}

TEST(Output, HistText) {
  MapDesc d{"@h", ValueKind::hist, {}};
  std::string out;
  append_map(out, d, {row({}, hist_of({5, 100, 0, -3, 1, 2048, 1500000}))}, OutputFormat::text);
  const char* bar = "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@";
  std::string expect = "@h: \n";
  auto line = [&](const char* h, int n) {
    char buf[200];
    std::snprintf(buf, sizeof buf, "%-16s%8d |%-52s|\n", h, n, n ? bar : "");
    expect += buf;
  };
  line("(..., 0)", 1);
  line("[0]", 1);
  line("[1]", 1);
  line("[2, 4)", 0);
  line("[4, 8)", 1);
  for (const char* h : {"[8, 16)", "[16, 32)", "[32, 64)"})
    line(h, 0);
  line("[64, 128)", 1);
  for (const char* h : {"[128, 256)", "[256, 512)", "[512, 1K)", "[1K, 2K)"})
    line(h, 0);
  line("[2K, 4K)", 1);
  for (const char* h : {"[4K, 8K)", "[8K, 16K)", "[16K, 32K)", "[32K, 64K)", "[64K, 128K)",
                        "[128K, 256K)", "[256K, 512K)", "[512K, 1M)"})
    line(h, 0);
  line("[1M, 2M)", 1);
  expect += "\n";
  EXPECT_EQ(out, expect);
  // One literal line from bpftrace, to pin the format string itself.
  EXPECT_NE(
      out.find("[1M, 2M)               1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n"),
      std::string::npos);
}

TEST(Output, HistBarsScale) {
  std::vector<std::uint64_t> b(kHistBuckets);
  b[hist_bucket(2)] = 3;
  b[hist_bucket(4)] = 1;
  EXPECT_EQ(hist_text(b),
            "[2, 4)                 3 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n"
            "[4, 8)                 1 |@@@@@@@@@@@@@@@@@                                   |\n");
}

TEST(Output, KeyedHistsAndLhist) {
  MapDesc d{"@h2", ValueKind::hist, {false}};
  std::string out;
  append_map(out, d, {row({2}, hist_of({3, 3})), row({1}, hist_of({2}))}, OutputFormat::text);
  EXPECT_EQ(out,
            "@h2[1]: \n"
            "[2, 4)                 1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n"
            "\n"
            "@h2[2]: \n"
            "[2, 4)                 2 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n"
            "\n");
  MapDesc l{"@d", ValueKind::lhist, {}, 0, 10, 1};
  std::vector<std::uint64_t> b(l.lhist_buckets());
  ++b[lhist_bucket(3, 0, 10, 1, l.lhist_buckets())];
  out.clear();
  append_map(out, l, {row({}, b)}, OutputFormat::text);
  EXPECT_EQ(out,
            "@d: \n"
            "[3, 4)                 1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n\n");
  EXPECT_EQ(lhist_label(2048), "2K");
  EXPECT_EQ(lhist_label(3145728), "3M");
  EXPECT_EQ(lhist_label(17), "17");
  EXPECT_EQ(hist_label(30), "1G");
}

TEST(Output, CountsSortedByValueThenKey) {
  MapDesc d{"@k", ValueKind::integer, {true}};
  std::string out;
  append_map(out, d, {row(str_key("z"), {3}), row(str_key("a"), {3}), row(str_key("m"), {1})},
             OutputFormat::text);
  EXPECT_EQ(out, "@k[m]: 1\n@k[a]: 3\n@k[z]: 3\n");
  MapDesc c{"@c", ValueKind::count, {false, true}};
  std::vector<std::uint64_t> k1 = {1}, k2 = {2};
  auto a = str_key("a"), bb = str_key("b");
  k1.insert(k1.end(), a.begin(), a.end());
  k2.insert(k2.end(), bb.begin(), bb.end());
  out.clear();
  append_map(out, c, {row(k2, {2}), row(k1, {1})}, OutputFormat::text);
  EXPECT_EQ(out, "@c[1, a]: 1\n@c[2, b]: 2\n");
  out.clear();
  append_map(out, c, {row(k2, {2}), row(k1, {1})}, OutputFormat::json);
  EXPECT_EQ(out, "{\"type\": \"map\", \"data\": {\"@c\": {\"1,a\": 1, \"2,b\": 2}}}\n");
}

TEST(Output, StatsAvgMinMaxSum) {
  std::string out;
  append_map(out, {"@s", ValueKind::stats, {}}, {row({}, {2, 7})}, OutputFormat::text);
  append_map(out, {"@a", ValueKind::avg, {}}, {row({}, {2, 9})}, OutputFormat::text);
  append_map(out, {"@mi", ValueKind::min, {}}, {row({}, {static_cast<std::uint64_t>(-2), 1})},
             OutputFormat::text);
  append_map(out, {"@su", ValueKind::sum, {}}, {row({}, {7})}, OutputFormat::text);
  append_map(out, {"@str", ValueKind::string, {}}, {row({}, str_key("hello"))}, OutputFormat::text);
  EXPECT_EQ(out, "@s: count 2, average 3, total 7\n\n@a: 4\n\n@mi: -2\n@su: 7\n@str: hello\n");
  out.clear();
  append_map(out, {"@s", ValueKind::stats, {}}, {row({}, {1, 3})}, OutputFormat::json);
  append_map(out, {"@sk", ValueKind::stats, {true}}, {row(str_key("x"), {1, 4})},
             OutputFormat::json);
  append_map(out, {"@ak", ValueKind::avg, {false}}, {row({3}, {1, 4})}, OutputFormat::json);
  append_map(out, {"@str", ValueKind::string, {}}, {row({}, str_key("a\"b"))}, OutputFormat::json);
  EXPECT_EQ(out,
            "{\"type\": \"stats\", \"data\": {\"@s\": {\"count\": 1, \"average\": 3, \"total\": "
            "3}}}\n"
            "{\"type\": \"stats\", \"data\": {\"@sk\": {\"x\": {\"count\": 1, \"average\": 4, "
            "\"total\": 4}}}}\n"
            "{\"type\": \"stats\", \"data\": {\"@ak\": {\"3\": 4}}}\n"
            "{\"type\": \"map\", \"data\": {\"@str\": \"a\\\"b\"}}\n");
}

TEST(Output, EmptyMaps) {
  std::string out;
  append_map(out, {"@x", ValueKind::count, {false}}, {}, OutputFormat::text);
  append_map(out, {"@z", ValueKind::hist, {}}, {}, OutputFormat::text);
  EXPECT_EQ(out, "\n\n");  // bpftrace prints an empty map as a blank line
  out.clear();
  append_map(out, {"@x", ValueKind::count, {false}}, {}, OutputFormat::json);
  EXPECT_EQ(out, "");
}

TEST(Output, HistAndLhistJson) {
  std::string out;
  append_map(out, {"@h", ValueKind::hist, {}}, {row({}, hist_of({5, 100, -1}))},
             OutputFormat::json);
  EXPECT_EQ(out,
            "{\"type\": \"hist\", \"data\": {\"@h\": [{\"max\": -1, \"count\": 1}, {\"min\": 0, "
            "\"max\": 0, \"count\": 0}, {\"min\": 1, \"max\": 1, \"count\": 0}, {\"min\": 2, "
            "\"max\": 3, \"count\": 0}, {\"min\": 4, \"max\": 7, \"count\": 1}, {\"min\": 8, "
            "\"max\": 15, \"count\": 0}, {\"min\": 16, \"max\": 31, \"count\": 0}, {\"min\": 32, "
            "\"max\": 63, \"count\": 0}, {\"min\": 64, \"max\": 127, \"count\": 1}]}}\n");
  MapDesc l{"@l", ValueKind::lhist, {}, 0, 100, 10};
  std::vector<std::uint64_t> b(l.lhist_buckets());
  for (int v : {7, -4, 200})
    ++b[lhist_bucket(v, 0, 100, 10, l.lhist_buckets())];
  out.clear();
  append_map(out, l, {row({}, b)}, OutputFormat::json);
  EXPECT_EQ(out,
            "{\"type\": \"hist\", \"data\": {\"@l\": [{\"max\": -1, \"count\": 1}, {\"min\": 0, "
            "\"max\": 9, \"count\": 1}, {\"min\": 10, \"max\": 19, \"count\": 0}, {\"min\": 20, "
            "\"max\": 29, \"count\": 0}, {\"min\": 30, \"max\": 39, \"count\": 0}, {\"min\": 40, "
            "\"max\": 49, \"count\": 0}, {\"min\": 50, \"max\": 59, \"count\": 0}, {\"min\": 60, "
            "\"max\": 69, \"count\": 0}, {\"min\": 70, \"max\": 79, \"count\": 0}, {\"min\": 80, "
            "\"max\": 89, \"count\": 0}, {\"min\": 90, \"max\": 99, \"count\": 0}, {\"min\": 100, "
            "\"count\": 1}]}}\n");
  MapDesc hk{"@hk", ValueKind::hist, {false}};
  out.clear();
  append_map(out, hk, {row({1}, hist_of({3})), row({2}, hist_of({2}))}, OutputFormat::json);
  EXPECT_EQ(out,
            "{\"type\": \"hist\", \"data\": {\"@hk\": {\"1\": [{\"min\": 2, \"max\": 3, "
            "\"count\": 1}], \"2\": [{\"min\": 2, \"max\": 3, \"count\": 1}]}}}\n");
}

TEST(Output, MessagesAndValues) {
  std::string out;
  append_message(out, "printf", "5 x\n", OutputFormat::json);
  append_message(out, "time", "06:19\n", OutputFormat::json);
  append_value(out, FmtArg{5, {}, false}, OutputFormat::json);
  append_value(out, FmtArg{0, "s", true}, OutputFormat::json);
  EXPECT_EQ(out,
            "{\"type\": \"printf\", \"data\": \"5 x\\n\"}\n"
            "{\"type\": \"time\", \"data\": \"06:19\\n\"}\n"
            "{\"type\": \"value\", \"data\": 5}\n"
            "{\"type\": \"value\", \"data\": \"s\"}\n");
  out.clear();
  append_value(out, FmtArg{-7, {}, false}, OutputFormat::text);
  EXPECT_EQ(out, "-7\n");
}

}  // namespace
}  // namespace hotprobe::script
