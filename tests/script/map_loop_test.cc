// for ($kv : @m) over a map's entries and len(@m): the entries as they are when the loop
// starts, $kv.0 the key and $kv.1 the value; a map changed inside a loop over it refused
// at check time, but for a delete, which bpftrace allows there (the loop goes on over the
// entries it started with).
#include <gtest/gtest.h>

#include <string>

#include "script_harness.h"

namespace hotprobe::script {
namespace {

using harness::first_line;
using harness::Script;

TEST(ScriptMapLoop, IteratesTheEntries) {
  Script s(
      "uprobe:libc:getpid { @c[arg0] = count(); @s[\"k\" ] = \"v\"; }\n"
      "uprobe:libc:getppid { $sum = 0; $n = 0;\n"
      " for ($kv : @c) { $sum += $kv.0 * $kv.1; $n++; }\n"
      " for ($e : @s) { printf(\"%s=%s\\n\", $e.0, $e.1); print($e); }\n"
      " printf(\"%d %d %d\\n\", $sum, $n, len(@c)); }");
  ASSERT_TRUE(s.prog);
  s.hit(0, 2);
  s.hit(0, 2);
  s.hit(0, 5);
  s.hit(1);
  EXPECT_EQ(s.sink.out, "k=v\n(k, v)\n9 2 2\n");
}

TEST(ScriptMapLoop, BreakAndAnEmptyMap) {
  Script s(
      "uprobe:libc:getpid { @m[arg0] = arg0 * 10; }\n"
      "uprobe:libc:getppid { $n = 0; for ($kv : @m) { $n++; break; } print($n); print(len(@m)); }");
  ASSERT_TRUE(s.prog);
  s.hit(1);
  s.hit(0, 1);
  s.hit(0, 2);
  s.hit(1);
  EXPECT_EQ(s.sink.out, "0\n0\n1\n2\n");
}

TEST(ScriptMapLoop, Errors) {
  EXPECT_EQ(first_line("uprobe:libc:getpid { @m[1] = 1; for ($kv : @m) { @m[2] = 3; } }"),
            "stdin:1:50-55: ERROR: @m is changed inside a for loop over it: the loop reads the "
            "map as it was when it started; change it after the loop");
  EXPECT_EQ(first_line("uprobe:libc:getpid { @m[1] = 1; delete(@m, 1, 2); }"),
            "stdin:1:33-49: ERROR: delete() takes a map element, delete(@m[KEY]), or a map and "
            "its key, delete(@m, KEY) (3 arguments provided)");
  EXPECT_EQ(first_line("uprobe:libc:getpid { @m = 1; for ($kv : @m) { } }"),
            "stdin:1:41-43: ERROR: for ($kv : @m): @m has no key: read it as a value (@m)");
  EXPECT_EQ(
      first_line("uprobe:libc:getpid { @h[1] = hist(2); for ($kv : @h) { } }"),
      "stdin:1:50-52: ERROR: for ($kv : @h): @h holds [int64] -> hist; hotprobe iterates maps "
      "whose key is an integer, a string, an array or a struct and whose value is one of "
      "these or a count, sum, min, max or avg");
  EXPECT_EQ(first_line("uprobe:libc:getpid { @m[1] = 1; print(len(@m[1])); }"),
            "stdin:1:43-48: ERROR: len() expects a whole map: write len(@m)");
}

}  // namespace
// bpftrace's delete(@m, KEY), KEY a tuple for a map of several key parts ($kv.0 of a
// loop over it), inside a loop over the map itself (bpftrace main's runtime case "map
// delete").
TEST(ScriptMapLoop, DeleteByKeyInsideALoopOverTheMap) {
  Script s(
      "uprobe:libc:getpid { @[0, 0, 0] = 1; @[0, 0, 1] = 1; @[0, 1, 0] = 1; @[1, 0, 0] = 1;\n"
      " for ($kv : @) { if ($kv.0.1 == 1) { delete(@, $kv.0); } }\n"
      " @one[7] = 1; @one[8] = 2; delete(@one, 7); print(@one); print(len(@)); }");
  ASSERT_TRUE(s.prog);
  s.hit(0);
  EXPECT_EQ(s.sink.out, "@one[8]: 2\n3\n");
}

}  // namespace hotprobe::script
