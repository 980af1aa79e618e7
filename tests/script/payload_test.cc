// Strings from the traced program are data, end to end: `hotprobe run` on a program that
// passes terminal escapes, \r, fake "hotprobe:" lines and invalid UTF-8 to a probed
// function; and, with --follow-forks, a child that drops privileges and writes into the
// channel itself is marked as that child, never taken for hotprobe or PROGRAM.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "support/run_command.h"

namespace {

using hp::test::hotprobe;

const std::string kScript = std::string("uprobe:") + HP_PAYLOADS +
                            ":emit { printf(\"<%s>\\n\", str(arg0)); @s[str(arg0)] = count(); }";

bool has_byte(const std::string& s, unsigned char lo, unsigned char hi) {
  for (unsigned char c : s)
    if (c >= lo && c <= hi && c != '\n' && c != '\t') return true;
  return false;
}

TEST(Payloads, TextEscapesTheProgramsStrings) {
  auto r = hotprobe({"run", "-e", kScript, "--", HP_PAYLOADS, "text"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(has_byte(r.out, 0, 0x1f)) << r.out;  // no ESC, BEL, \r reaches the terminal
  EXPECT_FALSE(has_byte(r.out, 0x7f, 0xff)) << r.out;
  EXPECT_NE(r.out.find("<\\x1b[2J\\x1b]0;owned\\x07>\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("<ok\\x0dhotprobe: error: fake>\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("<bad \\xff\\xfe \\xc0\\xaf \\x80 \\xed\\xa0\\x80 \\xe2\\x82 end>\n"),
            std::string::npos)
      << r.out;
  // A newline is kept: that line is on stdout, and hotprobe's own messages are on stderr.
  EXPECT_NE(r.out.find("<\nhotprobe: error: on a line of its own>\n"), std::string::npos) << r.out;
  EXPECT_EQ(r.err.find("fake"), std::string::npos) << r.err;
  // Map keys made of them, in the end-of-run dump.
  EXPECT_NE(r.out.find("@s[ok\\x0dhotprobe: error: fake]: 1\n"), std::string::npos) << r.out;
}

// python3's json module, strict: every line of `out` must be one JSON object.
std::string json_check(const std::string& out) {
  const std::string path = ::testing::TempDir() + "hp_payload_json_" + std::to_string(::getpid());
  {
    std::ofstream f(path, std::ios::binary);
    f << out;
  }
  const std::string cmd =
      "/usr/bin/python3 -c 'import json,sys\n"
      "data=open(sys.argv[1],\"rb\").read().decode(\"utf-8\")\n"
      "for line in data.splitlines():\n"
      "  o=json.loads(line)\n"
      "  d=o.get(\"data\")\n"
      "  if o[\"type\"]==\"printf\": print(repr(d))\n"
      "  if o[\"type\"]==\"map\": print(repr(sorted(d[\"@s\"])))\n"
      "  if o[\"type\"]==\"child\": print(\"child\", o[\"pid\"], repr(d))\n"
      "' " +
      path + " 2>&1";
  std::string result;
  if (FILE* p = ::popen(cmd.c_str(), "r")) {
    char buf[4096];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0)
      result.append(buf, n);
    if (::pclose(p) != 0) result = "python3 failed: " + result;
  }
  ::unlink(path.c_str());
  return result;
}

TEST(Payloads, JsonIsValidUtf8) {
  auto r = hotprobe({"run", "-o", "json", "-e", kScript, "--", HP_PAYLOADS, "text"});
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string parsed = json_check(r.out);
  EXPECT_EQ(parsed.find("python3 failed"), std::string::npos) << parsed << r.out;
  EXPECT_NE(parsed.find("'<\\x1b[2J\\x1b]0;owned\\x07>\\n'"), std::string::npos) << parsed;
  // Each byte that is not UTF-8 is one U+FFFD.
  EXPECT_NE(parsed.find("'<bad \xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd "
                        "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd \xef\xbf\xbd\xef\xbf\xbd end>\\n'"),
            std::string::npos)
      << parsed;
  EXPECT_NE(parsed.find("'ok\\rhotprobe: error: fake'"), std::string::npos) << parsed;
}

TEST(Payloads, ChildThatDroppedPrivilegesIsMarked) {
#if defined(HOTPROBE_TSAN)
  GTEST_SKIP() << "TSan cannot start a thread after a multi-threaded fork (the child's "
                  "agent does)";
#endif
  if (::getuid() != 0) GTEST_SKIP() << "needs root to start a child that drops to uid 65534";
  auto r = hotprobe({"run", "--follow-forks", "-e", kScript, "--", HP_PAYLOADS, "drop"});
  ASSERT_EQ(r.code, 0) << r.err;
  // Every line from the child, its agent's or written by the child itself, is marked.
  std::istringstream lines(r.out);
  std::string line, child_prefix;
  int parent_lines = 0, child_lines = 0;
  while (std::getline(lines, line)) {
    if (line.rfind("[pid ", 0) == 0) {
      ++child_lines;
      const std::string prefix = line.substr(0, line.find("] ") + 2);
      if (child_prefix.empty()) child_prefix = prefix;
      EXPECT_EQ(prefix, child_prefix) << r.out;
      continue;
    }
    EXPECT_EQ(line.find("forged"), std::string::npos) << r.out;
    EXPECT_EQ(line.find("owned"), std::string::npos) << r.out;
    EXPECT_EQ(line.find("fake"), std::string::npos) << r.out;
    if (line == "<parent>") ++parent_lines;
  }
  EXPECT_EQ(parent_lines, 1) << r.out;
  EXPECT_GT(child_lines, 0) << r.out;
  EXPECT_NE(r.out.find(child_prefix + "hotprobe: forged output\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(child_prefix + "<ok\\x0dhotprobe: error: fake>\n"), std::string::npos)
      << r.out;
  // Its maps print apart, marked: PROGRAM's @s holds only PROGRAM's key.
  EXPECT_NE(r.out.find("\n@s[parent]: 1\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(child_prefix + "@s[ok\\x0dhotprobe: error: fake]: 1\n"), std::string::npos)
      << r.out;
  // Its error message is said as the child's, and is not PROGRAM's error.
  EXPECT_NE(r.err.find("a followed child running as uid 65534, reported: hotprobe: error: forged"),
            std::string::npos)
      << r.err;
}

TEST(Payloads, ChildThatDroppedPrivilegesIsMarkedInJson) {
#if defined(HOTPROBE_TSAN)
  GTEST_SKIP() << "TSan cannot start a thread after a multi-threaded fork (the child's "
                  "agent does)";
#endif
  if (::getuid() != 0) GTEST_SKIP() << "needs root to start a child that drops to uid 65534";
  auto r =
      hotprobe({"run", "-o", "json", "--follow-forks", "-e", kScript, "--", HP_PAYLOADS, "drop"});
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string parsed = json_check(r.out);
  EXPECT_EQ(parsed.find("python3 failed"), std::string::npos) << parsed << r.out;
  // What the child wrote itself is a string inside a "child" object, never an object of its own.
  EXPECT_NE(parsed.find("'hotprobe: forged output'"), std::string::npos) << parsed;
  std::istringstream lines(parsed);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.find("forged") != std::string::npos || line.find("owned") != std::string::npos) {
      EXPECT_EQ(line.rfind("child ", 0), 0u) << parsed;
    }
  }
  EXPECT_NE(parsed.find("['parent']"), std::string::npos) << parsed;
}

}  // namespace
