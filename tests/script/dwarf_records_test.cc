// Structs and unions named only in DWARF: a script casts to `struct hp_rec *` without
// defining it, and the hotprobe command reads its layout (and the layouts it reaches)
// from the DWARF of the file the script's uprobes are on (hp::elf::dwarf_type_facts with
// a "struct NAME" pattern), as bpftrace does. A struct the script defines keeps the
// script's layout; one neither defines stays incomplete, with the way out.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "elf/dwarf.h"
#include "script/check_args.h"
#include "script_harness.h"

namespace hotprobe::script {
namespace {

using harness::Script;

// The fixture's types, as C lays them out.
struct HpInner {
  short s;
  char tag[4];
};
union HpEither {
  int i;
  unsigned char c;
};
struct HpRec {
  int a;
  HpInner in;
  HpEither u;
  HpRec* next;
  unsigned flags : 3;
  unsigned mode : 5;
  long arr[2];
};

std::string with_dwarf(const std::string& body, const std::string& defs = "") {
  const std::string src =
      defs + std::string("uprobe:") + HP_DWARF_RECORDS + ":main { " + body + " }";
  return with_type_facts(src, "stdin", &hp::elf::dwarf_type_facts);
}

std::uint64_t addr(const void* p) {
  return reinterpret_cast<std::uint64_t>(p);
}

TEST(ScriptDwarfRecords, TheFactsOfANamedStruct) {
  const std::string facts = hp::elf::dwarf_type_facts(HP_DWARF_RECORDS, "struct hp_rec", 3);
  ASSERT_TRUE(facts.starts_with("R\t3:")) << facts;
  EXPECT_NE(facts.find("\tstruct hp_rec\t" + std::to_string(sizeof(HpRec)) + "\t0\n"),
            std::string::npos)
      << facts;
  EXPECT_NE(facts.find("\tstruct hp_inner\t"), std::string::npos) << facts;
  EXPECT_NE(facts.find("\tunion hp_either\t4\t1\n"), std::string::npos) << facts;
  EXPECT_EQ(hp::elf::dwarf_type_facts(HP_DWARF_RECORDS, "struct hp_nosuch", 3), "");
  EXPECT_EQ(hp::elf::dwarf_type_facts("/nonexistent/prog", "struct hp_rec", 3), "");
}

TEST(ScriptDwarfRecords, CastFieldsNestedUnionsBitFieldsAndSizeof) {
  HpRec second{};
  second.a = 9;
  HpRec r{};
  r.a = -5;
  r.in.s = 300;
  std::memcpy(r.in.tag, "abc", 4);
  r.u.i = 0x141;
  r.next = &second;
  r.flags = 6;
  r.mode = 17;
  r.arr[1] = 1234567890123;
  Script s(with_dwarf(
      "$r = (struct hp_rec *)arg0; printf(\"%d %d %s %d %d %d %ld %d %d\\n\", $r->a, $r->in.s, "
      "$r->in.tag, $r->u.c, $r->flags, $r->mode, $r->arr[1], $r->next->a, "
      "sizeof(struct hp_rec)); print($r->in); @u = $r->u;"));
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(&r));
  EXPECT_EQ(s.sink.out, "-5 300 abc 65 6 17 1234567890123 9 " + std::to_string(sizeof(HpRec)) +
                            "\n{ .s = 300, .tag = abc }\n");
  EXPECT_EQ(s.maps(), "\n\n@u: { .i = 321, .c = 65 }\n");
}

TEST(ScriptDwarfRecords, TheScriptsOwnDefinitionWins) {
  std::int32_t words[2] = {11, 22};
  Script s(with_dwarf("printf(\"%d\\n\", ((struct hp_inner *)arg0)->w1);",
                      "struct hp_inner { int w0; int w1; }\n"));
  ASSERT_TRUE(s.prog);
  s.hit(0, addr(words));
  EXPECT_EQ(s.sink.out, "22\n");
}

TEST(ScriptDwarfRecords, AStructInNeitherIsIncomplete) {
  auto r = parse_and_check(with_dwarf("print(((struct hp_nosuch *)arg0)->x);"), "stdin");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find(
                "'struct hp_nosuch' is incomplete: define it in the script (struct hp_nosuch { "
                "... };) before reading it"),
            std::string::npos)
      << r.error().message();
}

}  // namespace
}  // namespace hotprobe::script
