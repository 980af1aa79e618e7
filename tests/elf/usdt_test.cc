// USDT probes from .note.stapsdt: the argument parser on every operand form, and the
// notes of the fixture program and library (tests/elf/fixture/usdt_*.c) checked against
// what binutils' `readelf -n` prints and against the bytes at each probe (a nop).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <elf.h>

#include "elf/elf_file.h"
#include "elf/usdt.h"
#include "elf_test_util.h"
#include "hotprobe/regs.h"

namespace {

using hp::elf::parse_usdt_arg;
using hp::elf::parse_usdt_args;
using hp::elf::UsdtArgKind;
using hp::elf::UsdtProbe;

constexpr int slot(std::size_t offset) {
  return static_cast<int>(offset / 8);
}

std::string prog() {
  return hp::elf::testing::fixture_path("hp_usdt_prog");
}
std::string lib() {
  return hp::elf::testing::fixture_path("libhp_usdt_lib.so");
}

std::vector<UsdtProbe> probes_of(const std::string& path) {
  auto f = hp::elf::load_elf(path);
  EXPECT_TRUE(f.ok()) << f.error().message();
  if (!f.ok()) return {};
  auto p = hp::elf::read_usdt(**f);
  EXPECT_TRUE(p.ok()) << p.error().message();
  return p.ok() ? *p : std::vector<UsdtProbe>{};
}

std::string run(const std::string& cmd) {
  std::string out;
  FILE* f = ::popen(cmd.c_str(), "r");
  if (!f) return out;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;)
    out.append(buf, n);
  ::pclose(f);
  return out;
}

// `readelf -n`'s stapsdt notes as "provider:name location semaphore args" lines.
std::vector<std::string> readelf_notes(const std::string& path) {
  std::vector<std::string> out;
  std::string text = run("readelf -n '" + path + "' 2>/dev/null");
  std::string provider, name, loc, sem;
  std::size_t pos = 0;
  while (pos < text.size()) {
    auto eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    std::string line = text.substr(pos, eol - pos);
    pos = eol + 1;
    auto field = [&](const char* key) -> std::string {
      auto k = line.find(key);
      if (k == std::string::npos) return "";
      auto v = line.substr(k + std::strlen(key));
      auto comma = v.find(',');
      return v.substr(0, comma);
    };
    if (line.find("Provider: ") != std::string::npos) {
      provider = field("Provider: ");
    } else if (line.find("Name: ") != std::string::npos) {
      name = field("Name: ");
    } else if (line.find("Location: ") != std::string::npos) {
      loc = field("Location: ");
      sem = field("Semaphore: ");
    } else if (line.find("Arguments:") != std::string::npos) {
      std::string args = line.substr(line.find("Arguments:") + 10);
      if (!args.empty() && args[0] == ' ') args.erase(0, 1);
      out.push_back(provider + ":" + name + " " +
                    std::to_string(std::strtoull(loc.c_str(), nullptr, 16)) + " " +
                    std::to_string(std::strtoull(sem.c_str(), nullptr, 16)) + " " + args);
    }
  }
  return out;
}

std::vector<std::string> ours(const std::vector<UsdtProbe>& probes) {
  std::vector<std::string> out;
  for (const UsdtProbe& p : probes)
    out.push_back(p.provider + ":" + p.name + " " + std::to_string(p.pc) + " " +
                  std::to_string(p.semaphore) + " " + p.args_text);
  return out;
}

TEST(UsdtArgs, Register) {
  auto a = parse_usdt_arg("-4@%edi");
  ASSERT_TRUE(a.ok()) << a.error().message();
  EXPECT_EQ(a->kind, UsdtArgKind::reg);
  EXPECT_EQ(a->size, 4u);
  EXPECT_TRUE(a->is_signed);
  EXPECT_EQ(a->reg_name, "edi");
  EXPECT_EQ(a->reg, slot(offsetof(hotprobe::Regs, rdi)));
  EXPECT_EQ(a->reg_width, 4u);
  EXPECT_EQ(a->reg_shift, 0u);

  a = parse_usdt_arg("1@%ah");
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(a->is_signed);
  EXPECT_EQ(a->reg, slot(offsetof(hotprobe::Regs, rax)));
  EXPECT_EQ(a->reg_width, 1u);
  EXPECT_EQ(a->reg_shift, 8u);

  struct Case {
    const char* text;
    std::size_t field;
    unsigned width;
  } cases[] = {
      {"8@%rax", offsetof(hotprobe::Regs, rax), 8}, {"2@%dx", offsetof(hotprobe::Regs, rdx), 2},
      {"1@%sil", offsetof(hotprobe::Regs, rsi), 1}, {"4@%r8d", offsetof(hotprobe::Regs, r8), 4},
      {"2@%r9w", offsetof(hotprobe::Regs, r9), 2},  {"1@%r15b", offsetof(hotprobe::Regs, r15), 1},
      {"8@%r12", offsetof(hotprobe::Regs, r12), 8}, {"8@%rbp", offsetof(hotprobe::Regs, rbp), 8},
      {"4@%ebx", offsetof(hotprobe::Regs, rbx), 4}, {"8@%rsp", offsetof(hotprobe::Regs, rsp), 8},
  };
  for (const Case& c : cases) {
    auto r = parse_usdt_arg(c.text);
    ASSERT_TRUE(r.ok()) << c.text << ": " << r.error().message();
    EXPECT_EQ(r->reg, slot(c.field)) << c.text;
    EXPECT_EQ(r->reg_width, c.width) << c.text;
  }
}

TEST(UsdtArgs, MemoryAndConstant) {
  auto a = parse_usdt_arg("8@-8(%rbp)");
  ASSERT_TRUE(a.ok()) << a.error().message();
  EXPECT_EQ(a->kind, UsdtArgKind::memory);
  EXPECT_EQ(a->reg, slot(offsetof(hotprobe::Regs, rbp)));
  EXPECT_EQ(a->offset, -8);
  EXPECT_EQ(a->index, -1);

  a = parse_usdt_arg("-8@16(%rbx,%rcx,8)");
  ASSERT_TRUE(a.ok()) << a.error().message();
  EXPECT_TRUE(a->is_signed);
  EXPECT_EQ(a->reg, slot(offsetof(hotprobe::Regs, rbx)));
  EXPECT_EQ(a->index, slot(offsetof(hotprobe::Regs, rcx)));
  EXPECT_EQ(a->scale, 8u);
  EXPECT_EQ(a->offset, 16);

  a = parse_usdt_arg("-2@(%rsp)");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->reg, slot(offsetof(hotprobe::Regs, rsp)));
  EXPECT_EQ(a->offset, 0);

  a = parse_usdt_arg("8@sink+8(%rip)");
  ASSERT_TRUE(a.ok()) << a.error().message();
  EXPECT_EQ(a->reg, slot(offsetof(hotprobe::Regs, rip)));
  EXPECT_EQ(a->symbol, "sink");
  EXPECT_EQ(a->offset, 8);

  a = parse_usdt_arg("4@0x10(,%rax,4)");
  ASSERT_TRUE(a.ok()) << a.error().message();
  EXPECT_EQ(a->reg, -1);
  EXPECT_EQ(a->index, slot(offsetof(hotprobe::Regs, rax)));
  EXPECT_EQ(a->offset, 16);

  a = parse_usdt_arg("4@$-7");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->kind, UsdtArgKind::constant);
  EXPECT_EQ(a->value, -7);
  a = parse_usdt_arg("-4@$5");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->value, 5);

  a = parse_usdt_arg("8f@%xmm1");
  ASSERT_TRUE(a.ok()) << a.error().message();
  EXPECT_TRUE(a->is_float);
  EXPECT_EQ(a->reg_name, "xmm1");
  EXPECT_EQ(a->reg, -1);  // not in the frame
}

TEST(UsdtArgs, ErrorsNameTheArgumentAndText) {
  struct Case {
    const char* text;
    const char* says;
  } cases[] = {
      {"4%edi", "no SIZE@"},
      {"3@%eax", "size '3'"},
      {"4@%foo", "'%foo' is not an x86-64 register"},
      {"4@(%rax,%rbx,3)", "scale '3'"},
      {"4@$abc", "not a constant"},
      {"4@-8(%ebp)", "not 64-bit"},
      {"4@12", "not an operand"},
      {"4@", "no operand"},
      {"4@8()", "without a base or index"},
  };
  for (const Case& c : cases) {
    auto r = parse_usdt_arg(c.text);
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_NE(r.error().message().find(c.says), std::string::npos)
        << c.text << ": " << r.error().message();
    EXPECT_NE(r.error().message().find(std::string("'") + c.text + "'"), std::string::npos)
        << r.error().message();
  }
  auto all = parse_usdt_args("-4@%edi  8@%rax 3@%eax");
  ASSERT_FALSE(all.ok());
  EXPECT_NE(all.error().message().find("argument 3 '3@%eax'"), std::string::npos)
      << all.error().message();
  auto none = parse_usdt_args("");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

TEST(UsdtNotes, ProgramMatchesReadelf) {
  auto probes = probes_of(prog());
  ASSERT_FALSE(probes.empty());
  auto reference = readelf_notes(prog());
  if (reference.empty()) GTEST_SKIP() << "readelf (binutils) is not installed";
  EXPECT_EQ(ours(probes), reference);
}

TEST(UsdtNotes, LibraryMatchesReadelf) {
  auto probes = probes_of(lib());
  ASSERT_EQ(probes.size(), 2u);
  auto reference = readelf_notes(lib());
  if (!reference.empty()) {
    EXPECT_EQ(ours(probes), reference);
  }
  // -O0: the arguments are stack slots below the frame pointer.
  const UsdtProbe& fire = probes[0];
  EXPECT_EQ(fire.provider, "hplib");
  EXPECT_EQ(fire.name, "fire");
  ASSERT_EQ(fire.args.size(), 2u);
  for (const auto& a : fire.args) {
    EXPECT_EQ(a.kind, UsdtArgKind::memory) << a.text;
    EXPECT_EQ(a.reg, slot(offsetof(hotprobe::Regs, rbp))) << a.text;
    EXPECT_LT(a.offset, 0) << a.text;
    EXPECT_TRUE(a.is_signed) << a.text;
  }
  EXPECT_EQ(fire.args[0].size, 4u);
  EXPECT_EQ(fire.args[1].size, 8u);
  EXPECT_TRUE(probes[1].args.empty());
}

TEST(UsdtNotes, EveryProbeIsANopInTheFile) {
  for (const std::string& path : {prog(), lib()}) {
    auto f = hp::elf::load_elf(path);
    ASSERT_TRUE(f.ok());
    auto probes = hp::elf::read_usdt(**f);
    ASSERT_TRUE(probes.ok());
    for (const UsdtProbe& p : *probes) {
      EXPECT_TRUE((*f)->offset_is_code(p.file_offset)) << p.name;
      auto bytes = (*f)->read_bytes(p.file_offset, 1);
      ASSERT_TRUE(bytes.ok());
      EXPECT_EQ((*bytes)[0], 0x90) << path << " " << p.provider << ":" << p.name;
    }
  }
}

TEST(UsdtNotes, ShapesOfTheFixturesProbes) {
  auto probes = probes_of(prog());
  std::map<std::string, std::vector<const UsdtProbe*>> by_name;
  for (const UsdtProbe& p : probes)
    by_name[p.provider + ":" + p.name].push_back(&p);

  // One provider:name at two sites: two probes, two places.
  ASSERT_EQ(by_name["hptest:twice"].size(), 2u);
  EXPECT_NE(by_name["hptest:twice"][0]->pc, by_name["hptest:twice"][1]->pc);
  auto twice = hp::elf::find_usdt(probes, "hptest", "tw*");
  EXPECT_EQ(twice.size(), 2u);
  EXPECT_EQ(hp::elf::find_usdt(probes, "", "").size(), probes.size());
  EXPECT_TRUE(hp::elf::find_usdt(probes, "nope", "").empty());

  ASSERT_EQ(by_name["hptest:none"].size(), 1u);
  EXPECT_TRUE(by_name["hptest:none"][0]->args.empty());

  ASSERT_EQ(by_name["hptest:small"].size(), 1u);
  const auto& small = by_name["hptest:small"][0]->args;
  ASSERT_EQ(small.size(), 3u);
  EXPECT_EQ(small[0].size, 1u);
  EXPECT_TRUE(small[0].is_signed);
  EXPECT_EQ(small[1].size, 1u);
  EXPECT_FALSE(small[1].is_signed);
  EXPECT_EQ(small[2].size, 2u);
  EXPECT_TRUE(small[2].is_signed);

  ASSERT_EQ(by_name["hptest:constant"].size(), 1u);
  ASSERT_EQ(by_name["hptest:constant"][0]->args.size(), 1u);
  EXPECT_EQ(by_name["hptest:constant"][0]->args[0].kind, UsdtArgKind::constant);
  EXPECT_EQ(by_name["hptest:constant"][0]->args[0].value, 5);

  ASSERT_EQ(by_name["hptest:forms"].size(), 1u);
  const auto& forms = by_name["hptest:forms"][0]->args;
  ASSERT_EQ(forms.size(), 6u);
  EXPECT_EQ(forms[0].scale, 8u);
  EXPECT_EQ(forms[1].value, -7);
  EXPECT_EQ(forms[2].reg_width, 2u);
  EXPECT_EQ(forms[3].reg, slot(offsetof(hotprobe::Regs, r9)));
  EXPECT_EQ(forms[4].symbol, "sink");
  EXPECT_EQ(forms[5].reg, slot(offsetof(hotprobe::Regs, rsp)));

  // Only the guarded probe has a semaphore: a two-byte counter in .probes, 0 on disk,
  // at the address the symbol table gives hptest_guarded_semaphore.
  for (const UsdtProbe& p : probes) {
    if (p.name != "guarded") {
      EXPECT_EQ(p.semaphore, 0u) << p.name;
      EXPECT_EQ(p.semaphore_offset, 0u) << p.name;
    }
  }
  ASSERT_EQ(by_name["hptest:guarded"].size(), 1u);
  const UsdtProbe& g = *by_name["hptest:guarded"][0];
  EXPECT_NE(g.semaphore, 0u);
  auto f = hp::elf::load_elf(prog());
  ASSERT_TRUE(f.ok());
  auto sem = (*f)->read_bytes(g.semaphore_offset, 2);
  ASSERT_TRUE(sem.ok());
  EXPECT_EQ((*sem)[0] | (*sem)[1], 0);
  std::string nm = run("nm '" + prog() + "' 2>/dev/null | grep ' hptest_guarded_semaphore$'");
  if (!nm.empty()) {
    EXPECT_EQ(std::strtoull(nm.c_str(), nullptr, 16), g.semaphore) << nm;
  }
  // The rip-relative operand's symbol, at the address nm gives `sink`.
  EXPECT_NE(forms[4].symbol_vaddr, 0u);
  nm = run("nm '" + prog() + "' 2>/dev/null | grep ' sink$'");
  if (!nm.empty()) {
    EXPECT_EQ(std::strtoull(nm.c_str(), nullptr, 16), forms[4].symbol_vaddr) << nm;
  }
}

TEST(UsdtNotes, FileWithoutNotesHasNone) {
  auto probes = probes_of(hp::elf::testing::fixture_lib());
  EXPECT_TRUE(probes.empty());
}

// A prelinker moves a file by changing its addresses; the note keeps the old address of
// .stapsdt.base, the section header has the new one. Probe and semaphore addresses move
// by the difference. Simulated by moving .stapsdt.base's sh_addr in a copy.
TEST(UsdtNotes, PrelinkDifferenceMovesProbes) {
  const std::string copy = ::testing::TempDir() + "hp_usdt_prelinked";
  {
    std::ifstream in(prog(), std::ios::binary);
    std::ofstream out(copy, std::ios::binary | std::ios::trunc);
    out << in.rdbuf();
  }
  std::fstream f(copy, std::ios::binary | std::ios::in | std::ios::out);
  Elf64_Ehdr eh;
  f.read(reinterpret_cast<char*>(&eh), sizeof eh);
  std::vector<Elf64_Shdr> sh(eh.e_shnum);
  f.seekg(static_cast<std::streamoff>(eh.e_shoff));
  f.read(reinterpret_cast<char*>(sh.data()),
         static_cast<std::streamsize>(sh.size() * sizeof sh[0]));
  const Elf64_Shdr& strtab = sh[eh.e_shstrndx];
  std::string names(strtab.sh_size, '\0');
  f.seekg(static_cast<std::streamoff>(strtab.sh_offset));
  f.read(names.data(), static_cast<std::streamsize>(names.size()));
  int base = -1;
  for (std::size_t i = 0; i < sh.size(); ++i) {
    if (std::strcmp(names.c_str() + sh[i].sh_name, ".stapsdt.base") == 0)
      base = static_cast<int>(i);
  }
  ASSERT_GE(base, 0) << "the fixture has no .stapsdt.base";
  // Backwards and small, so that every moved address stays in the file part of its
  // segment (the semaphore ends the data segment's file bytes).
  constexpr std::uint64_t kMove = std::uint64_t{0} - 4;
  sh[static_cast<std::size_t>(base)].sh_addr += kMove;
  f.seekp(static_cast<std::streamoff>(eh.e_shoff +
                                      static_cast<std::uint64_t>(base) * sizeof(Elf64_Shdr)));
  f.write(reinterpret_cast<const char*>(&sh[static_cast<std::size_t>(base)]), sizeof(Elf64_Shdr));
  f.close();

  auto original = probes_of(prog());
  auto loaded = hp::elf::load_elf_uncached(::open(copy.c_str(), O_RDONLY | O_CLOEXEC), copy);
  ASSERT_TRUE(loaded.ok()) << loaded.error().message();
  auto moved = hp::elf::read_usdt(**loaded);
  ASSERT_TRUE(moved.ok()) << moved.error().message();
  ASSERT_EQ(moved->size(), original.size());
  for (std::size_t i = 0; i < original.size(); ++i) {
    EXPECT_EQ((*moved)[i].pc, original[i].pc + kMove) << original[i].name;
    if (original[i].semaphore) {
      EXPECT_EQ((*moved)[i].semaphore, original[i].semaphore + kMove) << original[i].name;
    }
  }
  ::unlink(copy.c_str());
}

// Real files' notes, where the system has some with USDT probes (Debian's python3 and
// libstdc++; glibc where it is built with them).
TEST(UsdtNotes, RealBinariesMatchReadelf) {
  int compared = 0;
  for (const char* path : {"/usr/bin/python3", "/usr/lib/x86_64-linux-gnu/libc.so.6",
                           "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"}) {
    struct stat st;
    if (::stat(path, &st) != 0) continue;
    auto reference = readelf_notes(path);
    if (reference.empty()) continue;
    auto probes = probes_of(path);
    EXPECT_EQ(ours(probes), reference) << path;
    ++compared;
  }
  if (compared == 0) GTEST_SKIP() << "no file with USDT notes found";
}

}  // namespace
