// Function parameters and struct layouts from DWARF (tests/elf/fixture/dwarf_args.c built
// at -O0 and -O2 with -g, and without): type names as `bpftrace -lv` prints them (its
// output on the same source is the reference below), locations at entry by the calling
// convention, checked against the compiler's own location lists at -O2, struct members
// against offsetof of the same definition compiled here.
#include <gtest/gtest.h>

#include <dwarf.h>
#include <elfutils/libdw.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "elf/dwarf.h"
#include "elf_test_util.h"
#include "hotprobe/regs.h"

namespace {

using hp::elf::ArgLocation;
using hp::elf::DwarfFunction;
using hp::elf::DwarfInfo;

// The fixture's struct, as the compiler lays it out here too.
struct hp_point {
  int x;
  int y;
};
struct hp_big {
  long a;
  char name[16];
  struct hp_point where;
  unsigned flags : 3;
  unsigned mode : 5;
};

constexpr int slot(std::size_t offset) {
  return static_cast<int>(offset / 8);
}

std::string fixture(const char* name) {
  return hp::elf::testing::fixture_path(name);
}

std::unique_ptr<DwarfInfo> open_info(const std::string& path) {
  auto dw = DwarfInfo::open(path);
  EXPECT_TRUE(dw.ok()) << dw.error().message();
  return dw.ok() ? std::move(*dw) : nullptr;
}

// `bpftrace -lv 'uprobe:FIXTURE:hp_dw*'` (bpftrace 0.17), the same at -O0 and -O2.
constexpr const char* kBpftraceLv[][2] = {
    {"hp_dw_many",
     "    char c\n    short int s\n    int i\n    long int l\n    long long int ll\n"
     "    unsigned char uc\n    int seventh\n    long int eighth\n"},
    {"hp_dw_mixed", "    double d\n    int i\n    void* p\n    char** argv\n"},
    {"hp_dw_simple", "    int a\n    const char* s\n    long unsigned int n\n"},
    {"hp_dw_structs",
     "    struct hp_point* p\n    struct hp_point v\n    struct hp_big big\n    hp_size_t len\n"},
    {"hp_dw_void", ""},
};

class DwarfBuild : public ::testing::TestWithParam<const char*> {};

TEST_P(DwarfBuild, TypeNamesAsBpftracePrintsThem) {
  auto dw = open_info(fixture(GetParam()));
  ASSERT_TRUE(dw);
  for (const auto& [fn, expected] : kBpftraceLv) {
    auto f = dw->function(fn);
    ASSERT_TRUE(f.ok()) << f.error().message();
    EXPECT_EQ(hp::elf::format_params(*f), expected) << fn;
  }
  auto names = dw->function_names("hp_dw_*");
  ASSERT_EQ(names.size(), 5u);
  EXPECT_EQ(names.front(), "hp_dw_many");
  EXPECT_EQ(names.back(), "hp_dw_void");
}

TEST_P(DwarfBuild, LocationsAtEntry) {
  auto dw = open_info(fixture(GetParam()));
  ASSERT_TRUE(dw);
  const int rdi = slot(offsetof(hotprobe::Regs, rdi)), rsi = slot(offsetof(hotprobe::Regs, rsi)),
            rdx = slot(offsetof(hotprobe::Regs, rdx)), rcx = slot(offsetof(hotprobe::Regs, rcx)),
            r8 = slot(offsetof(hotprobe::Regs, r8)), r9 = slot(offsetof(hotprobe::Regs, r9));

  auto s = dw->function("hp_dw_structs");
  ASSERT_TRUE(s.ok());
  ASSERT_EQ(s->params.size(), 4u);
  EXPECT_EQ(s->params[0].location.reg, rdi);
  EXPECT_TRUE(s->params[0].is_pointer);
  EXPECT_EQ(s->params[0].struct_name, "struct hp_point");
  EXPECT_EQ(s->params[1].location.kind, ArgLocation::Kind::reg);  // 8 bytes: one register
  EXPECT_EQ(s->params[1].location.reg, rsi);
  EXPECT_EQ(s->params[1].size, sizeof(hp_point));
  EXPECT_EQ(s->params[1].struct_name, "struct hp_point");
  EXPECT_EQ(s->params[2].location.kind, ArgLocation::Kind::stack);  // > 16 bytes: memory
  EXPECT_EQ(s->params[2].location.stack_offset, 8);
  EXPECT_EQ(s->params[2].size, sizeof(hp_big));
  EXPECT_EQ(s->params[3].location.reg, rdx);  // the struct in memory used no register
  EXPECT_EQ(s->params[3].size, 8u);

  auto m = dw->function("hp_dw_many");
  ASSERT_TRUE(m.ok());
  ASSERT_EQ(m->params.size(), 8u);
  const int regs[] = {rdi, rsi, rdx, rcx, r8, r9};
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(m->params[static_cast<std::size_t>(i)].location.kind, ArgLocation::Kind::reg);
    EXPECT_EQ(m->params[static_cast<std::size_t>(i)].location.reg, regs[i]);
  }
  EXPECT_EQ(m->params[6].location.kind, ArgLocation::Kind::stack);
  EXPECT_EQ(m->params[6].location.stack_offset, 8);
  EXPECT_EQ(m->params[7].location.stack_offset, 16);
  EXPECT_EQ(m->params[7].location.where, "rsp+16");
  EXPECT_EQ(m->params[0].size, 1u);
  EXPECT_EQ(m->params[1].size, 2u);

  auto x = dw->function("hp_dw_mixed");
  ASSERT_TRUE(x.ok());
  ASSERT_EQ(x->params.size(), 4u);
  EXPECT_EQ(x->params[0].location.kind, ArgLocation::Kind::other);
  EXPECT_EQ(x->params[0].location.where, "xmm0");
  EXPECT_TRUE(x->params[0].is_float);
  EXPECT_EQ(x->params[1].location.reg, rdi);  // the double took no integer register
  EXPECT_EQ(x->params[3].location.reg, rdx);
  EXPECT_EQ(x->return_type, "double");

  auto v = dw->function("hp_dw_void");
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(v->params.empty());
  EXPECT_EQ(v->return_type, "void");

  // By address: every address inside the function names it.
  auto by_pc = dw->function_at(s->low_pc);
  ASSERT_TRUE(by_pc.ok()) << by_pc.error().message();
  EXPECT_EQ(by_pc->name, "hp_dw_structs");
  by_pc = dw->function_at(s->low_pc + 1);
  ASSERT_TRUE(by_pc.ok());
  EXPECT_EQ(by_pc->name, "hp_dw_structs");
}

TEST_P(DwarfBuild, StructMembersMatchTheCompilersLayout) {
  auto dw = open_info(fixture(GetParam()));
  ASSERT_TRUE(dw);
  auto big = dw->struct_type("struct hp_big");
  ASSERT_TRUE(big.ok()) << big.error().message();
  EXPECT_EQ(big->name, "struct hp_big");
  EXPECT_EQ(big->size, sizeof(hp_big));
  ASSERT_EQ(big->members.size(), 5u);
  EXPECT_EQ(big->members[0].name, "a");
  EXPECT_EQ(big->members[0].type, "long int");
  EXPECT_EQ(big->members[0].offset, offsetof(hp_big, a));
  EXPECT_EQ(big->members[1].type, "char[16]");
  EXPECT_EQ(big->members[1].offset, offsetof(hp_big, name));
  EXPECT_EQ(big->members[1].size, 16u);
  EXPECT_EQ(big->members[2].type, "struct hp_point");
  EXPECT_EQ(big->members[2].offset, offsetof(hp_big, where));
  EXPECT_EQ(big->members[3].bit_size, 3u);
  EXPECT_EQ(big->members[4].bit_size, 5u);
  // flags and mode share the bytes after `where`: bits 0-2 and 3-7 (little endian).
  EXPECT_EQ(big->members[3].offset * 8 + big->members[3].bit_offset,
            8 * sizeof(long) + 16 * 8 + 64);
  EXPECT_EQ(big->members[4].offset * 8 + big->members[4].bit_offset,
            big->members[3].offset * 8 + big->members[3].bit_offset + 3);

  // A typedef of a struct leads to it; a typedef of a number is refused by name.
  auto size_t_type = dw->struct_type("hp_size_t");
  ASSERT_FALSE(size_t_type.ok());
  EXPECT_NE(size_t_type.error().message().find("not a struct or union"), std::string::npos);
  auto missing = dw->struct_type("struct nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message().find("no type 'struct nope'"), std::string::npos);
}

// At -O2 the compiler's location list says where each parameter is at the function's
// first instruction; where it names a register, it must be the one the convention gives.
TEST(DwarfLocations, AgreeWithTheCompilersLocationLists) {
  const std::string path = fixture("hp_dwarf_O2");
  auto info = open_info(path);
  ASSERT_TRUE(info);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ::Dwarf* dw = dwarf_begin(fd, DWARF_C_READ);
  ASSERT_NE(dw, nullptr);
  // DWARF register numbers (x86-64 psABI) to Regs slots.
  const int dwarf_to_slot[] = {
      slot(offsetof(hotprobe::Regs, rax)), slot(offsetof(hotprobe::Regs, rdx)),
      slot(offsetof(hotprobe::Regs, rcx)), slot(offsetof(hotprobe::Regs, rbx)),
      slot(offsetof(hotprobe::Regs, rsi)), slot(offsetof(hotprobe::Regs, rdi)),
      slot(offsetof(hotprobe::Regs, rbp)), slot(offsetof(hotprobe::Regs, rsp)),
      slot(offsetof(hotprobe::Regs, r8)),  slot(offsetof(hotprobe::Regs, r9)),
  };
  int compared = 0;
  for (const char* name : {"hp_dw_simple", "hp_dw_many", "hp_dw_mixed", "hp_dw_structs"}) {
    auto fn = info->function(name);
    ASSERT_TRUE(fn.ok());
    Dwarf_Die cu;
    ASSERT_NE(dwarf_addrdie(dw, fn->low_pc, &cu), nullptr) << name;
    Dwarf_Die* scopes = nullptr;
    const int n = dwarf_getscopes(&cu, fn->low_pc, &scopes);
    ASSERT_GT(n, 0);
    Dwarf_Die fdie = scopes[0];
    std::free(scopes);
    Dwarf_Die c;
    std::size_t i = 0;
    ASSERT_EQ(dwarf_child(&fdie, &c), 0);
    do {
      if (dwarf_tag(&c) != DW_TAG_formal_parameter) continue;
      ASSERT_LT(i, fn->params.size()) << name;
      const auto& p = fn->params[i++];
      Dwarf_Attribute attr;
      Dwarf_Op* ops = nullptr;
      std::size_t nops = 0;
      if (!dwarf_attr(&c, DW_AT_location, &attr)) continue;
      if (dwarf_getlocation_addr(&attr, fn->low_pc, &ops, &nops, 1) != 1 || nops != 1) continue;
      const unsigned op = ops[0].atom;
      if (op >= DW_OP_reg0 && op <= DW_OP_reg9) {
        EXPECT_EQ(p.location.kind, ArgLocation::Kind::reg) << name << " " << p.name;
        EXPECT_EQ(p.location.reg, dwarf_to_slot[op - DW_OP_reg0]) << name << " " << p.name;
        ++compared;
      } else if (op >= DW_OP_reg17 && op <= DW_OP_reg24) {
        EXPECT_EQ(p.location.where, "xmm" + std::to_string(op - DW_OP_reg17)) << name;
        ++compared;
      }
    } while (dwarf_siblingof(&c, &c) == 0);
  }
  EXPECT_GE(compared, 10);  // most parameters of an -O2 build are registers at entry
  dwarf_end(dw);
  ::close(fd);
}

INSTANTIATE_TEST_SUITE_P(Builds, DwarfBuild,
                         ::testing::Values("hp_dwarf_O0", "hp_dwarf_O2", "hp_dwarf_split"));

// The line of the fixture's source that holds `text` (1-based), 0 if none.
unsigned line_of(const std::string& text) {
  std::ifstream in(HP_DWARF_SOURCE);
  std::string line;
  for (unsigned n = 1; std::getline(in, line); ++n)
    if (line.find(text) != std::string::npos) return n;
  return 0;
}

// bpftrace's source-line probes: the first row of the line table for the line. A
// function's first line is its entry; a line of its body is an address inside it.
TEST_P(DwarfBuild, SourceLineAddresses) {
  auto dw = open_info(fixture(GetParam()));
  ASSERT_TRUE(dw);
  auto fn = dw->function("hp_dw_simple");
  ASSERT_TRUE(fn.ok()) << fn.error().message();
  const unsigned first = line_of("int hp_dw_simple(");
  ASSERT_NE(first, 0u);
  auto entry = hp::elf::source_line_address(fixture(GetParam()), "dwarf_args.c", first, 0);
  ASSERT_TRUE(entry.ok()) << entry.error().message();
  EXPECT_EQ(*entry, fn->low_pc);
  auto body = hp::elf::source_line_address(fixture(GetParam()), "fixture/dwarf_args.c",
                                           line_of("return a + 1;"), 0);
  ASSERT_TRUE(body.ok()) << body.error().message();
  EXPECT_GT(*body, fn->low_pc);
  auto in = dw->function_at(*body);
  ASSERT_TRUE(in.ok()) << in.error().message();
  EXPECT_EQ(in->name, "hp_dw_simple");
  // The facts line the script layer reads.
  const std::string spec = "@dwarf_args.c:" + std::to_string(first);
  char addr[24];
  std::snprintf(addr, sizeof addr, "%llu", static_cast<unsigned long long>(fn->low_pc));
  EXPECT_EQ(hp::elf::dwarf_type_facts("M", spec, 0).substr(0, 2), "E\t");  // no file "M"
  EXPECT_EQ(hp::elf::dwarf_type_facts(fixture(GetParam()), spec, 0),
            "L\t" + fixture(GetParam()) + "\t" + spec + "\t" + addr + "\n");
}

TEST(DwarfSourceLines, ErrorsNameTheFilesAndTheWayOut) {
  const std::string path = fixture("hp_dwarf_O0");
  auto no_file = hp::elf::source_line_address(path, "nosuch.c", 3, 0);
  ASSERT_FALSE(no_file.ok());
  EXPECT_NE(no_file.error().message().find("no compilation unit of " + path +
                                           " was compiled from 'nosuch.c' (its source files: "),
            std::string::npos)
      << no_file.error().message();
  EXPECT_NE(no_file.error().message().find("dwarf_args.c"), std::string::npos);
  // A partial file name matches whole path components only.
  EXPECT_FALSE(hp::elf::source_line_address(path, "args.c", 3, 0).ok());
  auto no_code = hp::elf::source_line_address(path, "dwarf_args.c", 1, 0);  // a comment
  ASSERT_FALSE(no_code.ok());
  EXPECT_NE(no_code.error().message().find("line dwarf_args.c:1 of " + path + " has no code"),
            std::string::npos)
      << no_code.error().message();
  EXPECT_NE(no_code.error().message().find("try a nearby line"), std::string::npos);
  const std::string bad = hp::elf::dwarf_type_facts(path, "@dwarf_args.c:x", 0);
  EXPECT_NE(bad.find("is not FILE:LINE or FILE:LINE:COLUMN"), std::string::npos) << bad;
}

// Split DWARF whose .dwo file is gone: the error says which file and what to do.
TEST(DwarfSourceLines, SplitDwarfWithoutItsDwoSaysSo) {
  const std::string dir = ::testing::TempDir() + "hp_dwarf_split_" + std::to_string(::getpid());
  const std::string bin = dir + "/prog";
  const std::string cmd = "mkdir -p '" + dir + "' && cd '" + dir + "' && cp '" +
                          std::string(HP_DWARF_SOURCE) +
                          "' a.c && cc -g -O0 -gsplit-dwarf -c a.c -o a.o && cc a.o -o prog && "
                          "rm a.dwo";
  if (std::system(cmd.c_str()) != 0) GTEST_SKIP() << "cc cannot build split DWARF here";
  auto dw = DwarfInfo::open(bin);
  ASSERT_TRUE(dw.ok()) << dw.error().message();
  auto f = (*dw)->function("hp_dw_simple");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.error().message().find("split DWARF, and its file " + dir + "/a.dwo is missing"),
            std::string::npos)
      << f.error().message();
  // The line table is in the program itself: source lines still resolve.
  EXPECT_TRUE(hp::elf::source_line_address(bin, "a.c", line_of("int hp_dw_simple("), 0).ok());
  std::system(("rm -rf '" + dir + "'").c_str());
}

TEST(DwarfErrors, NoDebugInfoSaysWhatHelps) {
  const std::string path = fixture("hp_dwarf_nodebug");
  auto dw = DwarfInfo::open(path);
  ASSERT_FALSE(dw.ok());
  EXPECT_EQ(dw.error().message(),
            path + " has no DWARF debug info (install its -dbgsym package or build with -g)");
  auto info = open_info(fixture("hp_dwarf_O0"));
  ASSERT_TRUE(info);
  auto f = info->function("hp_dw_nope");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.error().message().find("no function 'hp_dw_nope'"), std::string::npos);
  auto missing = DwarfInfo::open("/nonexistent/hp_prog");
  EXPECT_FALSE(missing.ok());
}

// A stripped file whose .gnu_debuglink names a debug file next to it.
TEST(DwarfErrors, SeparateDebugFileByDebuglink) {
  const std::string dir = ::testing::TempDir() + "hp_dwarf_link_" + std::to_string(::getpid());
  const std::string bin = dir + "/prog", dbg = dir + "/prog.debug";
  const std::string src = fixture("hp_dwarf_O0");
  const std::string cmd = "mkdir -p '" + dir + "' && objcopy --only-keep-debug '" + src + "' '" +
                          dbg + "' && objcopy --strip-debug --add-gnu-debuglink='" + dbg + "' '" +
                          src + "' '" + bin + "' 2>/dev/null";
  if (std::system(cmd.c_str()) != 0) GTEST_SKIP() << "objcopy (binutils) is not installed";
  auto dw = DwarfInfo::open(bin);
  ASSERT_TRUE(dw.ok()) << dw.error().message();
  EXPECT_EQ((*dw)->debug_path(), dbg);
  auto f = (*dw)->function("hp_dw_simple");
  ASSERT_TRUE(f.ok()) << f.error().message();
  EXPECT_EQ(f->params.size(), 3u);
  std::system(("rm -rf '" + dir + "'").c_str());
}

// bpftrace's --debuginfo: a stripped file with no debug link, its debug file named after
// it in a directory given relative to the file's own (as elfutils reads the path), or
// absolute.
TEST(DwarfErrors, DebuginfoDirectories) {
  const std::string dir = ::testing::TempDir() + "hp_dwarf_dirs_" + std::to_string(::getpid());
  const std::string bin = dir + "/prog";
  const std::string src = fixture("hp_dwarf_O0");
  const std::string cmd = "mkdir -p '" + dir + "/ext' && objcopy --only-keep-debug '" + src +
                          "' '" + dir + "/ext/prog.debug' && objcopy --strip-debug '" + src +
                          "' '" + bin + "' 2>/dev/null";
  if (std::system(cmd.c_str()) != 0) GTEST_SKIP() << "objcopy (binutils) is not installed";
  EXPECT_FALSE(DwarfInfo::open(bin).ok());
  for (const std::string& d : {std::string("./ext"), dir + "/ext"}) {
    hp::elf::set_debuginfo_dirs({"/nonexistent-hp", d});
    auto dw = DwarfInfo::open(bin);
    ASSERT_TRUE(dw.ok()) << d << ": " << dw.error().message();
    EXPECT_EQ((*dw)->debug_path(), (d.starts_with('/') ? d : dir + "/" + d) + "/prog.debug");
    EXPECT_TRUE((*dw)->function("hp_dw_simple").ok());
  }
  hp::elf::set_debuginfo_dirs({});
  EXPECT_FALSE(DwarfInfo::open(bin).ok());
  std::system(("rm -rf '" + dir + "'").c_str());
}

}  // namespace
