// End-to-end tests of how `hotprobe run` and `hotprobe list` turn what the user names
// into places to probe (docs/design/elf.md): addresses as nm prints them, .cold fragments,
// probes a few bytes apart, names through symlinks and PATH, stripped files, files that
// are not regular files, IFUNCs. Every count is exact: the fixtures call their functions
// a known number of times.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "elf/elf_file.h"
#include "support/run_command.h"

namespace {

using namespace std::chrono_literals;

using Run = hp::test::CommandResult;
using hp::test::contains;

// The hotprobe and agent under test; $HP_RESOLVE_HOTPROBE and $HP_RESOLVE_AGENT name
// others (an older build, to show that these tests fail on it).
const char* env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}
const char* const kHotprobe = env_or("HP_RESOLVE_HOTPROBE", HP_HOTPROBE);
const char* const kAgent = env_or("HP_RESOLVE_AGENT", HP_AGENT);

// Runs hotprobe with `args`; `path_dir`, if given, goes first in its PATH.
// `debug`: HOTPROBE_DEBUG set (each site says its mode on stderr).
Run hotprobe(const std::vector<std::string>& args, const std::string& path_dir = {},
             std::chrono::seconds timeout = 60s, bool debug = false) {
  hp::test::Command c{{kHotprobe}};
  c.argv.insert(c.argv.end(), args.begin(), args.end());
  c.env = {{"HOTPROBE_AGENT", kAgent}};
  if (debug) c.env.emplace_back("HOTPROBE_DEBUG", "1");
  if (!path_dir.empty()) {
    const char* old = std::getenv("PATH");
    c.env.emplace_back("PATH", path_dir + ":" + (old ? old : "/usr/bin:/bin"));
  }
  c.timeout = timeout;
  return hp::test::run_command(c);
}

std::string hex(std::uint64_t v) {
  char b[32];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

const hp::elf::Symbol* symbol(const hp::elf::ElfFile& f, std::string_view name) {
  auto v = f.find(name);
  return v.size() == 1 ? v[0] : nullptr;
}

// A temporary directory, removed with what it holds.
struct TempDir {
  std::string path;
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "hp_resolve_XXXXXX";
    path = ::mkdtemp(tmpl.data()) ? tmpl : std::string();
  }
  ~TempDir() {
    std::error_code ec;
    if (!path.empty()) std::filesystem::remove_all(path, ec);
  }
};

// `uprobe:BIN:0xADDR` is the address nm prints (as bpftrace reads it). In this lld PIE the
// text segment's addresses are not its file offsets: read as a file offset, hp_first's
// address lands elsewhere (here, outside the code).
TEST(Resolve, AddressIsTheVirtualAddressNmPrints) {
  if (std::string(HP_PIE).empty()) GTEST_SKIP() << "clang or ld.lld not found at configure time";
  auto elf = hp::elf::load_elf(HP_PIE);
  ASSERT_TRUE(elf.ok()) << elf.error().message();
  const hp::elf::Symbol* first = symbol(**elf, "hp_first");
  ASSERT_NE(first, nullptr);
  ASSERT_NE(first->value, first->file_offset) << "the fixture should be laid out by lld";
  auto r = hotprobe({"run", "-e",
                     "uprobe:" + std::string(HP_PIE) + ":" + hex(first->value) +
                         " { @a = count(); } uprobe:" + HP_PIE + ":hp_second { @b = count(); }",
                     "--", HP_PIE, "5"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "@a: 5\n")) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "@b: 10\n")) << r.out << r.err;

  // The file offset has its own form.
  r = hotprobe({"run", "-e",
                "uprobe:" + std::string(HP_PIE) + ":fileoff:" + hex(first->file_offset) +
                    " { @a = count(); }",
                "--", HP_PIE, "4"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "@a: 4\n")) << r.out << r.err;

  // An address inside an instruction, or in no function, is refused, saying why.
  r = hotprobe({"run", "-e", "uprobe:" + std::string(HP_PIE) + ":" + hex(first->value + 1) + " {}",
                "--", HP_PIE, "1"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "is inside")) << r.err;
  r = hotprobe({"run", "-e",
                "uprobe:" + std::string(HP_PIE) + ":" + hex(first->value + first->size) + " {}",
                "--", HP_PIE, "1"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "in no function")) << r.err;
}

// g++ -O2 moves the throwing paths into NAME.cold fragments, entered by a jump. Globs and
// `list` skip them; a return probe on one is refused; an entry probe on one named
// explicitly is an instruction probe and counts every entry.
TEST(Resolve, ColdFragmentsAreNotFunctions) {
  if (std::string(HP_COLD).empty()) GTEST_SKIP() << "g++ not found at configure time";
  auto elf = hp::elf::load_elf(HP_COLD);
  ASSERT_TRUE(elf.ok()) << elf.error().message();
  if (!symbol(**elf, "_Z6middlei.cold") || !symbol(**elf, "_Z5inneri.cold"))
    GTEST_SKIP() << "this g++ made no .cold fragments";

  auto list = hotprobe({"list", HP_COLD});
  EXPECT_EQ(list.code, 0) << list.err;
  EXPECT_TRUE(contains(list.out, ":_Z6middlei\n")) << list.out;
  EXPECT_FALSE(contains(list.out, ".cold")) << list.out;
  list = hotprobe({"list", HP_COLD, "*.cold*"});
  EXPECT_EQ(list.code, 0) << list.err;
  EXPECT_TRUE(contains(list.out, ":_Z6middlei.cold (fragment)\n")) << list.out;

  // 9 calls of middle; inner throws for 2, 5 and 8, through middle; middle throws from its
  // fragment for 7; 5 return. When the glob matched the fragment, its entry counted as a
  // tenth call, and a return probe there took whatever the stack held at the fragment's
  // entry for a return address and replaced it (in a program whose string pointer was
  // there: "free(): invalid pointer").
  auto r = hotprobe({"run", "-e",
                     "uretprobe:" + std::string(HP_COLD) + ":_Z6middle* { @r = count(); } " +
                         "uprobe:" + HP_COLD + ":_Z6middle* { @e = count(); }",
                     "--", HP_COLD, "9"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "@e: 9\n")) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "@r: 5\n")) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "sum 68 caught 4\n")) << r.out;

  r = hotprobe({"run", "-e", "uretprobe:" + std::string(HP_COLD) + ":_Z6middlei.cold {}", "--",
                HP_COLD, "3"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "is a fragment of _Z6middlei")) << r.err;
  EXPECT_TRUE(contains(r.err, "entry probe on the fragment")) << r.err;

  // The fragments are where inner and middle go to throw: 3 times and once.
  r = hotprobe({"run", "-e",
                "uprobe:" + std::string(HP_COLD) + ":_Z5inneri.cold { @i = count(); } uprobe:" +
                    HP_COLD + ":_Z6middlei.cold { @m = count(); }",
                "--", HP_COLD, "9"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "@i: 3\n")) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "@m: 1\n")) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "sum 68 caught 4\n")) << r.out;
}

// Two probes whose patches would overlap (malloc and malloc+2: the first's 5-byte jump
// covers the second) both attach, and each counts every call.
TEST(Resolve, ProbesAFewBytesApartBothCount) {
#if defined(HOTPROBE_ASAN) || defined(HOTPROBE_TSAN)
  GTEST_SKIP() << "the sanitizer runtime in the agent replaces malloc: libc's is not called";
#endif
  auto r = hotprobe({"run", "-e",
                     "uprobe:libc:malloc { @a = count(); } uprobe:libc:malloc+2 { @b = count(); }",
                     "--", "/bin/ls", "/"});  // ls allocates (/bin/true does not, and the
                                              // agent's own mallocs are not counted)
  ASSERT_EQ(r.code, 0) << r.err;
  auto count = [&](const std::string& name) {
    const auto at = r.out.find(name + ": ");
    return at == std::string::npos ? -1L : std::atol(r.out.c_str() + at + name.size() + 2);
  };
  EXPECT_GT(count("@a"), 0) << r.out;
  EXPECT_EQ(count("@a"), count("@b")) << r.out;
}

// A module named by a symlink (as /usr/bin/redis-server names redis-check-rdb): by PATH,
// by the name the program was started as, and by path, the probe applies to the file the
// symlink leads to.
TEST(Resolve, ModuleNamedThroughASymlink) {
  TempDir dir;
  ASSERT_FALSE(dir.path.empty());
  const std::string link = dir.path + "/hp-linked-name";
  ASSERT_EQ(::symlink(HP_PLAIN, link.c_str()), 0);
  auto r = hotprobe(
      {"run", "-e", "uprobe:hp-linked-name:hp_first { @ = count(); }", "--", "hp-linked-name", "4"},
      dir.path);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "@: 4\n")) << r.out << r.err;
  r = hotprobe({"run", "-e", "uprobe:" + link + ":hp_second { @ = count(); }", "--", link, "3"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "@: 6\n")) << r.out << r.err;
}

// A stripped program with no exported function: `list` says so and what would help.
TEST(Resolve, ListOfAStrippedProgramSaysWhatWouldHelp) {
  auto r = hotprobe({"list", HP_STRIPPED});
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_EQ(r.out, "");
  EXPECT_TRUE(contains(r.err, "stripped")) << r.err;
  EXPECT_TRUE(contains(r.err, "debug")) << r.err;
  EXPECT_TRUE(contains(r.err, "with symbols")) << r.err;
}

// A FIFO where a module is named: refused at once (opening it used to wait for a writer
// forever), by `list` and by a probe.
TEST(Resolve, FifoIsRefusedWithoutWaiting) {
  TempDir dir;
  ASSERT_FALSE(dir.path.empty());
  const std::string fifo = dir.path + "/libfifo.so";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  auto r = hotprobe({"list", fifo});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "is a FIFO, not a regular file")) << r.err;
  r = hotprobe({"run", "-e", "uprobe:" + fifo + ":f {}", "--", "/bin/true"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "is a FIFO, not a regular file")) << r.err;
}

// In a stripped program an address names code no symbol sizes: its FDE does, so main
// (long enough) takes a jump, not an int3, and the count is exact. The addresses are the
// unstripped build's, as nm prints them.
TEST(Resolve, StrippedProgramsFunctionIsSizedByItsFde) {
  auto elf = hp::elf::load_elf(HP_PLAIN);
  ASSERT_TRUE(elf.ok()) << elf.error().message();
  const hp::elf::Symbol* main_fn = symbol(**elf, "main");
  const hp::elf::Symbol* second = symbol(**elf, "hp_second");
  ASSERT_TRUE(main_fn && second);
  const std::string stripped = HP_STRIPPED;
  auto r = hotprobe({"run", "-e",
                     "uprobe:" + stripped + ":" + hex(main_fn->value) + " { @m = count(); } " +
                         "uprobe:" + stripped + ":" + hex(second->value) + " { @s = count(); }",
                     "--", stripped, "10"},
                    {}, 60s, /*debug=*/true);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "@m: 1\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "@s: 20\n")) << r.out;
  EXPECT_TRUE(
      contains(r.err, "hp_resolve_stripped:fileoff:" + hex(main_fn->file_offset) + ": jmp site"))
      << r.err;
}

// strlen is an IFUNC: the probe goes on the implementation the loader picked, and counts
// exactly the program's calls (N through a volatile pointer; this program makes no other),
// not hotprobe's own.
TEST(Resolve, IfuncCountsTheProgramsCallsOfTheImplementation) {
  auto r = hotprobe({"run", "-e", "uprobe:libc:strlen { @ = count(); }", "--", HP_STRLEN, "1000"});
  EXPECT_EQ(r.code, 0) << r.err;
  // 5 calls are the agent's own, outside the engine (its exit hooks' names, its thread).
  const auto at = r.out.find("@: ");
  ASSERT_NE(at, std::string::npos) << r.out;
  const long n = std::atol(r.out.c_str() + at + 3);
  EXPECT_GE(n, 1000) << r.out;
  EXPECT_LE(n, 1000 + 8) << r.out;
}

}  // namespace
