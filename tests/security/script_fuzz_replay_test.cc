// Replays the script fuzz entry point (src/script/fuzz.h) in every build, sanitizers
// included: a seed corpus of real scripts, then mutations of them (byte flips, tokens
// inserted, ranges deleted and duplicated) and random token soups. fuzz_one dies on any
// inconsistency, and a sanitizer reports any memory error, so passing means: no crash, no
// tree past the parser's limits, and every accepted script lowered, ran and printed.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "script/fuzz.h"

namespace hotprobe::script {
namespace {

const std::vector<std::string>& corpus() {
  static const std::vector<std::string> c = {
      "BEGIN { printf(\"hello %d %s\\n\", 42, \"x\"); exit(); }",
      "uprobe:libc:malloc { @[arg0] = count(); @s = sum(arg0); @h = hist(arg0); }",
      "uprobe:libc:malloc /arg0 > 100 && pid != 0/ { @bytes[comm, tid] = sum(arg0); }",
      "uretprobe:libc:malloc { @r = lhist(retval, 0, 1000, 10); @m = max(retval); }",
      "BEGIN { $x = 1; $x += 2; $y = $x * 3 - 1; if ($y > 5) { @a = $y; } else { @a = 0; } }",
      "BEGIN { unroll(3) { @i++; } print(@i); clear(@i); zero(@i); delete(@i); }",
      "interval:ms:100 { @t = nsecs; time(\"%H:%M\\n\"); print(@t, 1, 1); }",
      "uprobe:libc:puts { $s = str(arg0, 8); @k[$s] = 1; printf(\"%s %x %u\\n\", $s, 255, 1); }",
      "BEGIN { @x = 1 ? \"a\" : \"b\"; @y = (@x == \"a\") ? -1 : ~2; @z = !(@y < 0); }",
      "BEGIN { @a[1, \"k\"] = avg(5); @b = stats(3); @c = min(-1); return; }",
      "u:libc:free, ur:libc:calloc { @f[probe, func] = count(); }",
      "BEGIN { @v = 1 + 2 * 3 / 4 % 5 << 1 >> 2 & 7 | 8 ^ 9 || 0 && 1; }",
      "BEGIN { if (1) { if (0) { @x = 1; } else if (1) { @x = 2; } } }",
      "// comment\nBEGIN /* block */ { @e = elapsed; @c = cpu; @u = uid + gid; }",
      // From the libFuzzer target: str() of a string lowers as a copy (lowered as a read
      // through a pointer, a hit calls a null function).
      "uprobe:libc:puts { $s = str(comm, 8); @k[$s] = 1; printf(\"%s %x %u\\n\", $s, 255, 1); }",
      "BEGIN { @a = str(\"abcdef\", 3); @b = str(str(\"xyz\")); @c = str(probe, 0); }",
  };
  return c;
}

// Tokens the mutations insert: operators, keywords, delimiters and builtins.
const std::vector<std::string>& tokens() {
  static const std::vector<std::string> t = {
      "(",
      ")",
      "{",
      "}",
      "[",
      "]",
      ",",
      ";",
      "?",
      ":",
      "/",
      "+",
      "-",
      "*",
      "%",
      "<<",
      ">>",
      "==",
      "!=",
      "<",
      ">=",
      "&&",
      "||",
      "!",
      "~",
      "++",
      "--",
      "+=",
      "=",
      "@m",
      "@",
      "$x",
      "arg0",
      "retval",
      "comm",
      "str(",
      "count()",
      "hist(",
      "lhist(",
      "printf(\"%d\"",
      "print(",
      "if",
      "else",
      "unroll(",
      "return",
      "\"s\"",
      "0x10",
      "-1",
      "BEGIN",
      "END",
      "uprobe:libc:malloc",
      "interval:s:1",
      "\\",
      "\"",
      "/*",
      "//",
      "\n",
      "0",
      "99999999999999999999999",
  };
  return t;
}

TEST(ScriptFuzzReplay, Corpus) {
  FuzzStats stats;
  for (const std::string& s : corpus())
    fuzz_one(s, &stats);
  EXPECT_EQ(stats.checked, corpus().size());  // the seeds are all valid scripts
}

TEST(ScriptFuzzReplay, MutatedCorpus) {
  std::mt19937_64 rng(20261207);
  FuzzStats stats;
  for (int i = 0; i < 30000; ++i) {
    std::string s = corpus()[rng() % corpus().size()];
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !s.empty(); ++e) {
      const std::size_t at = rng() % s.size();
      switch (rng() % 5) {
        case 0:
          s[at] = static_cast<char>(rng());
          break;
        case 1:
          s.insert(at, tokens()[rng() % tokens().size()]);
          break;
        case 2:
          s.erase(at, 1 + rng() % 8);
          break;
        case 3: {  // duplicate a range: nests deeper, repeats operators
          const std::size_t len = 1 + rng() % 16;
          const std::string piece = s.substr(at, len);
          for (int k = static_cast<int>(rng() % 40); k > 0; --k)
            s.insert(at, piece);
          break;
        }
        default:
          s.insert(at, std::string(1 + rng() % 200, "(-~!"[rng() % 4]));
          break;
      }
    }
    fuzz_one(s, &stats);
  }
  EXPECT_GT(stats.parsed, 300u);
  EXPECT_GT(stats.checked, 100u);
}

TEST(ScriptFuzzReplay, TokenSoup) {
  std::mt19937_64 rng(7);
  FuzzStats stats;
  for (int i = 0; i < 20000; ++i) {
    std::string s = "BEGIN { ";
    const int n = 1 + static_cast<int>(rng() % 30);
    for (int k = 0; k < n; ++k)
      s += tokens()[rng() % tokens().size()] + " ";
    s += "}";
    fuzz_one(s, &stats);
  }
  EXPECT_EQ(stats.inputs, 20000u);
}

}  // namespace
}  // namespace hotprobe::script
