// dlopen under `hotprobe run`: the module watcher places the probes of a library inside
// dlopen (docs/design/agent.md, "Libraries loaded later"), and the library's constructor
// runs right after, on the same thread. Every malloc the constructor makes is the
// program's and counts, exactly; so do those of another thread that runs meanwhile, and
// the probe on the loaded library fires on every load (fixture/dlopen_ctor.c). The agent
// brings no shared library but libc and libZydis into the process (src/agent/CMakeLists.txt):
// a program that dlopen()s one of the libraries the agent is built from makes the loader do
// all its work, as without hotprobe.
#include <elf.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "agent_e2e_util.h"

namespace {

using hp::agent_test::bpftrace_usable;
using hp::agent_test::map_value;
using hp::agent_test::read_file;
using hp::agent_test::run_command;
using hp::agent_test::RunResult;

constexpr long kCtorCalls = 7;  // fixture/dl_ctor_lib.c

bool sanitized() {
  return std::strlen(HP_SANITIZE) != 0;
}

RunResult hotprobe_run(const std::string& script, const std::vector<std::string>& command) {
  std::vector<std::string> args{HP_HOTPROBE, "run", "-e", script, "--"};
  args.insert(args.end(), command.begin(), command.end());
  return run_command(args, {}, std::chrono::seconds(60));
}

// Sizes nobody else asks for tell the fixture's calls apart from the loader's and libc's.
std::string sized_script() {
  return std::string("uprobe:libc:malloc /arg0 == 12345/ { @ctor = count(); } ") +
         "uprobe:libc:malloc /arg0 == 12346/ { @thread = count(); } " +
         "uprobe:libc:malloc /arg0 == 12347/ { @dtor = count(); } " + "uprobe:" HP_DL_CTOR_LIB +
         ":dl_ctor_fn { @fn = count(); }";
}

TEST(Dlopen, ConstructorMallocsCountExactly) {
  if (sanitized()) GTEST_SKIP() << "the sanitizer runtime replaces malloc in the program";
  constexpr long kLoads = 1;
  auto r = hotprobe_run(sized_script(), {HP_DLOPEN_CTOR, HP_DL_CTOR_LIB, "1", "0"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "ctor"), kCtorCalls * kLoads) << r.out;
  EXPECT_EQ(map_value(r.out, "dtor"), kLoads) << r.out;
  EXPECT_EQ(map_value(r.out, "fn"), kLoads) << r.out;
}

// Each load maps the library again: its probe goes from pending to placed and back, a
// batch each time, while the other thread mallocs on.
TEST(Dlopen, RepeatedLoadsWithAThreadMallocingMeanwhileCountExactly) {
  if (sanitized()) GTEST_SKIP() << "the sanitizer runtime replaces malloc in the program";
  constexpr long kLoads = 20, kThreadCalls = 5000;
  auto r = hotprobe_run(sized_script(), {HP_DLOPEN_CTOR, HP_DL_CTOR_LIB, std::to_string(kLoads),
                                         std::to_string(kThreadCalls)});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(map_value(r.out, "ctor"), kCtorCalls * kLoads) << r.out;
  EXPECT_EQ(map_value(r.out, "dtor"), kLoads) << r.out;
  EXPECT_EQ(map_value(r.out, "fn"), kLoads) << r.out;
  EXPECT_EQ(map_value(r.out, "thread"), kThreadCalls) << r.out;
}

// Every malloc and free of the process, the loader's included, against bpftrace's.
TEST(Dlopen, AllMallocsAndFreesEqualBpftrace) {
  if (sanitized()) GTEST_SKIP() << "a sanitizer runtime in the program makes calls of its own";
  if (std::string why = bpftrace_usable(); !why.empty()) GTEST_SKIP() << why;
  hp::agent_test::expect_counts_equal_bpftrace(HP_HOTPROBE, {"malloc", "free"},
                                               {HP_DLOPEN_CTOR, HP_DL_CTOR_LIB, "3", "0"});
}

// perl's DynaLoader dlopen()s each argument: libz, libelf and libstdc++, which the agent is
// built from. With any of them loaded by the agent already, the loader's work for that
// dlopen (its mallocs: 5 for libz, 8 for libelf, 12 for libstdc++ under bpftrace) is mostly
// not done, and the counts differ.
TEST(Dlopen, LibrariesTheAgentIsBuiltFromLoadAsWithoutHotprobe) {
  if (sanitized()) GTEST_SKIP() << "a sanitizer runtime in the program makes calls of its own";
  const std::string perl = "/usr/bin/perl";
  if (::access(perl.c_str(), X_OK) != 0)
    GTEST_SKIP() << perl << " is not installed (scripts/install-deps.sh installs it)";
  if (std::string why = bpftrace_usable(); !why.empty()) GTEST_SKIP() << why;
  // perl copies the environment (%ENV); the agent removes every HOTPROBE_* variable from
  // the program's, so bpftrace's child must not have them either. unsetenv moves the
  // entries after the one it removes down by one.
  for (char** e = environ; *e;) {
    if (std::strncmp(*e, "HOTPROBE_", 9) != 0)
      e++;
    else
      ::unsetenv(std::string(*e, std::strcspn(*e, "=")).c_str());
  }
  // No spaces: bpftrace's -c splits the command on them.
  hp::agent_test::expect_counts_equal_bpftrace(
      HP_HOTPROBE, {"malloc", "free"},
      {perl, "-MDynaLoader", "-e",
       "DynaLoader::dl_load_file($_,0)||die(DynaLoader::dl_error())for@ARGV", "libz.so.1",
       "libelf.so.1", "libstdc++.so.6"});
}

// The agent's dynamic section and symbol table, read from the file.
struct AgentElf {
  std::vector<std::string> needed;    // DT_NEEDED
  std::vector<std::string> exported;  // defined global and weak symbols of .dynsym
};

AgentElf read_agent_elf(const std::string& path) {
  AgentElf out;
  const std::string f = read_file(path);
  if (f.size() < sizeof(Elf64_Ehdr)) return out;
  auto at = [&](std::size_t off) { return f.data() + off; };
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(at(0));
  const auto* sh = reinterpret_cast<const Elf64_Shdr*>(at(eh->e_shoff));
  for (int i = 0; i < eh->e_shnum; i++) {
    const Elf64_Shdr& s = sh[i];
    const char* strtab = at(sh[s.sh_link].sh_offset);
    if (s.sh_type == SHT_DYNAMIC) {
      for (const auto* d = reinterpret_cast<const Elf64_Dyn*>(at(s.sh_offset)); d->d_tag != DT_NULL;
           d++)
        if (d->d_tag == DT_NEEDED) out.needed.emplace_back(strtab + d->d_un.d_val);
    } else if (s.sh_type == SHT_DYNSYM) {
      const auto* sym = reinterpret_cast<const Elf64_Sym*>(at(s.sh_offset));
      for (std::size_t k = 0; k < s.sh_size / sizeof(Elf64_Sym); k++) {
        int bind = ELF64_ST_BIND(sym[k].st_info);
        if (sym[k].st_shndx != SHN_UNDEF && (bind == STB_GLOBAL || bind == STB_WEAK))
          out.exported.emplace_back(strtab + sym[k].st_name);
      }
    }
  }
  return out;
}

// What the program can see of the agent's linking: the shared libraries it brings (libc and
// the loader, which every dynamic program has; libm, which an unoptimized build calls;
// libZydis, which Debian ships shared only; a sanitizer's runtime in sanitizer builds) and the
// symbols it exports (its entry points: nothing that a program's own definition or lookup could
// meet).
TEST(AgentLinking, NeedsOnlyLibcAndZydisAndExportsOnlyItsEntryPoints) {
  const std::string agent =
      (std::filesystem::path(HP_HOTPROBE).parent_path() / "libhotprobe_agent.so").string();
  AgentElf elf = read_agent_elf(agent);
  ASSERT_FALSE(elf.needed.empty()) << agent << ": no DT_NEEDED read";
  auto starts = [](const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; };
  for (const auto& n : elf.needed) {
    bool allowed = n == "libc.so.6" || n == "ld-linux-x86-64.so.2" || n == "libm.so.6" ||
                   starts(n, "libZydis.so.") ||
                   (sanitized() && (starts(n, "libasan.so") || starts(n, "libubsan.so") ||
                                    starts(n, "libtsan.so")));
    EXPECT_TRUE(allowed) << agent << " needs " << n;
  }
  ASSERT_FALSE(elf.exported.empty()) << agent << ": no exported symbol read";
  std::vector<std::string> foreign;
  for (const auto& s : elf.exported)
    if (!starts(s, "hotprobe_agent_")) foreign.push_back(s);
  EXPECT_TRUE(foreign.empty()) << agent << " exports " << foreign.size()
                               << " symbols that are not its entry points, the first: "
                               << foreign.front();
}

#ifdef HP_OPERATOR_NEW
// The agent's allocations bind to its own libstdc++'s operator new, never to the
// program's (fixture/operator_new.cc counts the calls of its own): the count is the same
// under hotprobe as alone. The agent on the shared libstdc++ made it 4376 instead of 128.
long operator_new_calls(const std::string& err) {
  const std::string key = "operator new calls: ";
  auto at = err.find(key);
  return at == std::string::npos ? -1 : std::stol(err.substr(at + key.size()));
}

TEST(AgentLinking, ProgramsOperatorNewSeesNoneOfTheAgentsAllocations) {
  if (sanitized())
    GTEST_SKIP() << "the sanitizer runtime defines operator new: the agent's calls bind to the "
                    "process's, the program's own when it has one";
  RunResult alone = run_command({HP_OPERATOR_NEW}, {}, std::chrono::seconds(60));
  ASSERT_EQ(alone.status, 0) << alone.err;
  long want = operator_new_calls(alone.err);
  ASSERT_GT(want, 0) << alone.err;
  RunResult traced = hotprobe_run("uprobe:libc:malloc { @m = count(); }", {HP_OPERATOR_NEW});
  ASSERT_EQ(traced.status, 0) << traced.err;
  EXPECT_EQ(operator_new_calls(traced.err), want) << traced.err;
}
#endif

}  // namespace
