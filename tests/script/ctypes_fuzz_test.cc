// The C declaration parser and the memory-read lowering on damaged input: every prefix of
// scripts using every C-type construct, and each with one byte removed, go through the
// fuzz entry point (parse, check, lower, run each action once, print). A crash, a
// sanitizer report or an abort on an accepted tree is the bug; nothing else is asserted
// but that the undamaged scripts are accepted.
#include <gtest/gtest.h>

#include <string>

#include "script/fuzz.h"

namespace hotprobe::script {
namespace {

constexpr const char* kSeeds[] = {
    "struct in { short x; unsigned char y; };\n"
    "union u { uint32 w; uint8 b[4]; };\n"
    "struct node { int id; char name[16]; struct in in; long vals[3]; struct node *next;\n"
    "  unsigned int flag : 1; signed int level : 4; unsigned int : 0; union u u;\n"
    "  struct { int a; int b; }; const char *s; };\n"
    "enum color { RED, GREEN = 5, BLUE, NEG = -2 };\n"
    "typedef struct node node_t;\n"
    "BEGIN { $n = (node_t *)0; @a[$n->name, $n->in.y] = count();\n"
    "  printf(\"%d %d %s\\n\", $n->next->vals[2] + (*$n).level, $n->u.b[1], $n->name);\n"
    "  @s = sizeof(struct node) + offsetof(struct node, in.y) + BLUE + $n->a;\n"
    "  $p = (uint32 *)8; @v = *($p + 3) + $p[2] + (int8)300 + (uint16)-1 + 1e3; }",
    "#!/usr/bin/env hotprobe\n"
    "config = { print_maps_on_exit = 0; BPFTRACE_LOG_SIZE = 100 }\n"
    "struct s { char c[4]; struct s *p; };\n"
    "BEGIN { @[probe, ((struct s *)1)->p->p->c] = count(); @p = (struct s *)0; "
    "print(@p->c); }",
};

TEST(ScriptCTypesFuzz, PrefixesAndDeletionsNeverCrash) {
  FuzzStats whole;
  for (const char* seed : kSeeds)
    fuzz_one(seed, &whole);
  EXPECT_EQ(whole.checked, std::size(kSeeds)) << "a seed script is not accepted";
  FuzzStats stats;
  for (std::string seed : kSeeds) {
    for (std::size_t n = 0; n < seed.size(); ++n)
      fuzz_one(std::string_view(seed).substr(0, n), &stats);
    for (std::size_t k = 0; k < seed.size(); ++k)
      fuzz_one(seed.substr(0, k) + seed.substr(k + 1), &stats);
  }
  EXPECT_GT(stats.checked, 0u);
  EXPECT_GT(stats.inputs, stats.checked);
}

}  // namespace
}  // namespace hotprobe::script
