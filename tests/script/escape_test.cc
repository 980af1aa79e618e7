// Strings from the traced program are data: text output escapes their terminal controls
// and invalid bytes, JSON output is valid UTF-8 whatever the bytes.
#include <gtest/gtest.h>

#include "script/output.h"

namespace hotprobe::script {
namespace {

std::string text_of(std::string_view s) {
  std::string out;
  append_text_escaped(out, s);
  EXPECT_EQ(out.size(), text_escaped_size(s));
  return out;
}
std::string json_of(std::string_view s) {
  std::string out;
  json_escape(out, s);
  return out;
}

TEST(Escape, TextEscapesTerminalControlsButTabAndNewline) {
  EXPECT_EQ(text_of("plain text"), "plain text");
  EXPECT_EQ(text_of("a\tb\nc"), "a\tb\nc");
  EXPECT_EQ(text_of("\x1b[2J\x1b]0;title\x07"), "\\x1b[2J\\x1b]0;title\\x07");
  EXPECT_EQ(text_of("ok\rhotprobe: error"), "ok\\x0dhotprobe: error");
  EXPECT_EQ(text_of(std::string_view("a\0b", 3)), "a\\x00b");
  EXPECT_EQ(text_of("\x7f"), "\\x7f");
  EXPECT_EQ(text_of("\xc2\x9b"
                    "31m"),
            "\\xc2\\x9b31m");  // C1 CSI, as UTF-8
}

TEST(Escape, TextKeepsValidUtf8AndEscapesInvalidBytes) {
  EXPECT_EQ(text_of("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"),
            "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
  EXPECT_EQ(text_of("\x9b"
                    "31m"),
            "\\x9b31m");                                  // a lone continuation byte (8-bit CSI)
  EXPECT_EQ(text_of("\xc0\xaf"), "\\xc0\\xaf");           // overlong '/'
  EXPECT_EQ(text_of("\xed\xa0\x80"), "\\xed\\xa0\\x80");  // a surrogate
  EXPECT_EQ(text_of("\xe2\x82"), "\\xe2\\x82");           // truncated
  EXPECT_EQ(text_of("\xff"), "\\xff");
}

TEST(Escape, JsonIsValidUtf8) {
  EXPECT_EQ(json_of("caf\xc3\xa9"), "caf\xc3\xa9");
  EXPECT_EQ(json_of("\x9b"), "\xef\xbf\xbd");
  EXPECT_EQ(json_of("\xc0\xaf"), "\xef\xbf\xbd\xef\xbf\xbd");
  EXPECT_EQ(json_of("a\xe2\x82"), "a\xef\xbf\xbd\xef\xbf\xbd");
  EXPECT_EQ(json_of("\x1b\"\\\r\x7f\xc2\x9b"), "\\u001b\\\"\\\\\\r\\u007f\\u009b");
}

TEST(Escape, PrintfEscapesArgumentsNotTheFormat) {
  const FormatSpec spec[] = {
      {"\x1b[1m<", 's', false, false, false, false, false, 8, -1},
      {">[", 's', true, false, false, false, false, 6, 3},
      {"]", 'c', false, false, false, false, false, -1, -1},
      {"\n", 0},
  };
  const FmtArg args[] = {{0, "\x1b[2J", true}, {0, "\r\r\rxyz", true}, {27, {}, false}};
  std::string out;
  format_printf(out, spec, args, /*escape=*/true);
  EXPECT_EQ(out, "\x1b[1m< \\x1b[2J>[\\x0d\\x0d\\x0d]\\x1b\n");
  out.clear();
  format_printf(out, spec, args, /*escape=*/false);  // json: the whole text is escaped after
  EXPECT_EQ(out, std::string("\x1b[1m<    \x1b[2J>[\r\r\r   ]\x1b\n"));
}

TEST(Escape, MapKeysAndStringValuesInText) {
  MapDesc d{"@s", ValueKind::string, {true}};
  std::vector<std::uint64_t> k(kStrWords), v(kStrWords);
  put_string(k.data(), "k\x1b[0m");
  put_string(v.data(), "\rhotprobe: error");
  std::string out;
  append_map(out, d, {Row{k, v}}, OutputFormat::text);
  EXPECT_EQ(out, "@s[k\\x1b[0m]: \\x0dhotprobe: error\n");
  out.clear();
  append_value(out, FmtArg{0, "\x1b]0;x\x07", true}, OutputFormat::text);
  EXPECT_EQ(out, "\\x1b]0;x\\x07\n");
}

}  // namespace
}  // namespace hotprobe::script
