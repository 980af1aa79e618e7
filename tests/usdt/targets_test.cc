// The forms of a usdt target beyond MODULE:usdt:PROVIDER:NAME, as bpftrace takes them with a
// process: no module (every module of the process), a module glob, no provider, a quoted
// probe name; resolved (hotprobe::resolve_usdt) and attached (Engine::attach) in this
// process, which holds probes of its own and loads fixture/usdt_lib.c.
#include <dlfcn.h>
#include <sys/sdt.h>

#include <atomic>
#include <string>

#include <gtest/gtest.h>

#include "elf/usdt.h"
#include "hotprobe/probe.h"
#include "hotprobe/symbols.h"
#include "hotprobe/usdt.h"

namespace {

std::atomic<long> g_hits{0};
void on_hit(hotprobe::Hit&) {
  g_hits.fetch_add(1, std::memory_order_relaxed);
}

std::atomic<long> g_sink{0};

// hpt:mark(v), and a probe whose name holds quotes ("quoted" with them, as
// DTRACE_PROBE(hpt, "quoted") writes it).
__attribute__((noinline)) void mark(long v) {
  DTRACE_PROBE1(hpt, mark, v);
  g_sink.fetch_add(v, std::memory_order_relaxed);
}
__attribute__((noinline)) void quoted() {
  DTRACE_PROBE(hpt, "quoted");
  g_sink.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace

// A function the uprobe tests name in every module ("*:hpt_entry").
extern "C" __attribute__((noinline)) int hpt_entry(long v) {
  g_sink.fetch_add(v, std::memory_order_relaxed);
  return 0;
}

namespace {

using Fire = int (*)(long);

// The fixture library, loaded once for the tests that need a second module.
Fire library() {
  static void* h = ::dlopen(HP_USDT_LATER, RTLD_NOW);
  return h ? reinterpret_cast<Fire>(::dlsym(h, "hpl_fire")) : nullptr;
}

std::string main_path() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
}

TEST(UsdtWhat, ProviderMayBeLeftEmptyOrOut) {
  auto a = hp::elf::parse_usdt_what("tracetest:testprobe");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->provider, "tracetest");
  EXPECT_EQ(a->name, "testprobe");
  auto b = hp::elf::parse_usdt_what(":*probe2");  // bpftrace's usdt:PATH::*probe2
  ASSERT_TRUE(b.ok()) << b.error().message();
  EXPECT_EQ(b->provider, "");
  EXPECT_EQ(b->name, "*probe2");
  auto c = hp::elf::parse_usdt_what("*");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->provider, "");
  EXPECT_EQ(c->name, "*");
}

TEST(UsdtWhat, QuotedFieldsTakeTheirEscapes) {
  auto a = hp::elf::parse_usdt_what(R"(test:"\"probe1\"")");
  ASSERT_TRUE(a.ok()) << a.error().message();
  EXPECT_EQ(a->provider, "test");
  EXPECT_EQ(a->name, "\"probe1\"");
  auto b = hp::elf::parse_usdt_what(R"("a:b":"c:d")");
  ASSERT_TRUE(b.ok()) << b.error().message();
  EXPECT_EQ(b->provider, "a:b");
  EXPECT_EQ(b->name, "c:d");
}

TEST(UsdtWhat, MalformedTextNamesTheForms) {
  for (const char* bad : {"", "p:", "a:b:c", R"("open)", R"("x"y)"}) {
    auto r = hp::elf::parse_usdt_what(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.error().message().find("PROVIDER:NAME"), std::string::npos) << r.error().message();
  }
}

TEST(UsdtTargets, NoModuleIsEveryModuleOfTheProcess) {
  ASSERT_NE(library(), nullptr) << ::dlerror();
  // A probe of the program and one of the library, each found without naming its file.
  auto mine = hotprobe::resolve_usdt(":usdt:hpt:mark");
  ASSERT_TRUE(mine.ok()) << mine.error().message();
  ASSERT_EQ(mine->size(), 1u);
  EXPECT_EQ((*mine)[0].module, main_path());
  EXPECT_NE((*mine)[0].address, 0u);
  auto lib = hotprobe::resolve_usdt(":usdt:hpl:fire");
  ASSERT_TRUE(lib.ok()) << lib.error().message();
  ASSERT_EQ(lib->size(), 1u);
  EXPECT_NE((*lib)[0].module.find("libhp_usdt_later"), std::string::npos) << (*lib)[0].module;
  EXPECT_NE((*lib)[0].address, 0u);
  // "*" is the same; a provider left empty is any provider.
  auto star = hotprobe::resolve_usdt("*:usdt::fire");
  ASSERT_TRUE(star.ok()) << star.error().message();
  EXPECT_EQ(star->size(), 1u);
  // Every probe of both: the program's two and the library's two at least.
  auto all = hotprobe::resolve_usdt(":usdt:hp*:*");
  ASSERT_TRUE(all.ok()) << all.error().message();
  EXPECT_GE(all->size(), 4u);
}

TEST(UsdtTargets, ModuleGlobMatchesTheLoadedModulesPaths) {
  ASSERT_NE(library(), nullptr) << ::dlerror();
  auto lib = hotprobe::resolve_usdt("*/libhp_usdt_l*:usdt:hpl:*");
  ASSERT_TRUE(lib.ok()) << lib.error().message();
  EXPECT_EQ(lib->size(), 2u);  // fire and guarded
  // A relative glob is read from the current directory, "./" and ".." parts and all.
  const std::string self = main_path();
  const std::string dir = self.substr(0, self.rfind('/'));
  const std::string base = self.substr(self.rfind('/') + 1);
  char cwd[4096];
  ASSERT_NE(::getcwd(cwd, sizeof cwd), nullptr);
  ASSERT_EQ(::chdir(dir.c_str()), 0);
  auto rel = hotprobe::resolve_usdt("./../" + dir.substr(dir.rfind('/') + 1) + "/" +
                                    base.substr(0, 4) + "*:usdt:hpt:mark");
  ASSERT_EQ(::chdir(cwd), 0);
  ASSERT_TRUE(rel.ok()) << rel.error().message();
  EXPECT_EQ(rel->size(), 1u);
}

TEST(UsdtTargets, QuotedNameMatchesTheNoteWithQuotes) {
  auto q = hotprobe::resolve_usdt(R"(:usdt:hpt:"\"quoted\"")");
  ASSERT_TRUE(q.ok()) << q.error().message();
  ASSERT_EQ(q->size(), 1u);
  EXPECT_EQ((*q)[0].name, "\"quoted\"");
}

TEST(UsdtTargets, NothingMatchingSaysWhereItLookedAndHowToList) {
  auto none = hotprobe::resolve_usdt(":usdt:hpt:nosuch");
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.error().message().find("in " + main_path() +
                                        " or any other module of this "
                                        "process"),
            std::string::npos)
      << none.error().message();
  EXPECT_NE(none.error().message().find("hotprobe list -p PID 'usdt:*'"), std::string::npos)
      << none.error().message();
  auto nofile = hotprobe::resolve_usdt("/nonexistent/dir/x*:usdt:hpt:mark");
  ASSERT_FALSE(nofile.ok());
  EXPECT_NE(nofile.error().message().find("no file matches"), std::string::npos)
      << nofile.error().message();
}

TEST(UprobeTargets, StarOrAGlobForTheModuleSearchesTheLoadedModules) {
  // bpftrace's uprobe:*:FUNC with a process: FUNC in every module that has it.
  auto every = hotprobe::resolve_functions("*:hpt_entry");
  ASSERT_TRUE(every.ok()) << every.error().message();
  ASSERT_EQ(every->size(), 1u);
  EXPECT_EQ((*every)[0].module, main_path());
  const std::string self = main_path();
  auto glob = hotprobe::resolve_functions("*/" + self.substr(self.rfind('/') + 1, 6) + "*:hpt_*");
  ASSERT_TRUE(glob.ok()) << glob.error().message();
  EXPECT_EQ(glob->size(), 1u);
  auto none = hotprobe::resolve_functions("*:hpt_nosuch");
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.error().message().find("no function 'hpt_nosuch' in any module of this process"),
            std::string::npos)
      << none.error().message();
  auto nomod = hotprobe::resolve_functions("/nonexistent/*:hpt_entry");
  ASSERT_FALSE(nomod.ok());
  EXPECT_NE(nomod.error().message().find("no module of this process matches"), std::string::npos)
      << nomod.error().message();
}

TEST(UsdtTargets, AttachedWithoutAModuleEverySiteIsHit) {
  ASSERT_NE(library(), nullptr) << ::dlerror();
  auto e = hotprobe::Engine::create();
  ASSERT_TRUE(e.ok()) << e.error().message();
  g_hits = 0;
  hotprobe::ProbeSpec s;
  s.target = ":usdt:hp[tl]:*";  // the program's probes and the library's, by no module
  s.on_entry = on_hit;
  auto a = (*e)->attach(s);
  ASSERT_TRUE(a.ok()) << a.error().message();
  mark(1);
  quoted();
  library()(3);  // hpl:fire, then hpl:guarded: its semaphore is raised while probed
  EXPECT_EQ(g_hits.load(), 4);
  ASSERT_TRUE((*e)->detach(*a).ok());
  mark(2);
  EXPECT_EQ(library()(4), 0);  // the semaphore is back to 0
  EXPECT_EQ(g_hits.load(), 4);
}

}  // namespace
