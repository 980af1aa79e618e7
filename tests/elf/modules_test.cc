#include "elf/modules.h"

#include <dlfcn.h>
#include <gtest/gtest.h>
#include <link.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <exception>
#include <set>

#include "elf_test_util.h"

extern "C" __attribute__((noinline, used)) int hp_modules_test_function(int x) {
  return x * 7 + 2;
}

namespace hp::elf {
namespace {

using testing::fixture_lib;

std::string libc_path() {
  Dl_info info;
  EXPECT_NE(::dladdr(reinterpret_cast<void*>(&::getpid), &info), 0);
  return info.dli_fname;
}

ModuleKey key_of(const std::string& path) {
  struct stat st;
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return ModuleKey{st.st_dev, st.st_ino};
}

TEST(Modules, SelfHasMainLibcAndLoader) {
  auto mods = ModuleList::of_self();
  ASSERT_TRUE(mods.ok()) << mods.error().message();
  EXPECT_TRUE(mods->is_self());
  EXPECT_EQ(mods->pid(), ::getpid());
  const Module* main = mods->main();
  ASSERT_NE(main, nullptr);
  EXPECT_EQ(main->key, key_of("/proc/self/exe"));
  EXPECT_TRUE(main->dl_loaded);
  EXPECT_TRUE(main->contains(reinterpret_cast<std::uintptr_t>(&hp_modules_test_function)));
  EXPECT_EQ(mods->containing(reinterpret_cast<std::uintptr_t>(&hp_modules_test_function)), main);

  const Module* libc = mods->find(key_of(libc_path()));
  ASSERT_NE(libc, nullptr);
  EXPECT_TRUE(libc->dl_loaded);
  EXPECT_FALSE(libc->is_main);
  EXPECT_EQ(libc->name(), "libc.so.6");

  // Exactly one main; every module has an executable mapping; keys are unique.
  int mains = 0;
  std::set<std::pair<std::uint64_t, std::uint64_t>> keys;
  for (const Module& m : mods->modules()) {
    mains += m.is_main;
    EXPECT_TRUE(keys.insert({m.key.dev, m.key.ino}).second) << m.path;
    bool exec = false;
    for (const Mapping& map : m.mappings)
      exec = exec || map.executable();
    EXPECT_TRUE(exec) << m.path;
  }
  EXPECT_EQ(mains, 1);
}

// The loader's load bias (dlpi_addr) and the one computed from maps + program headers
// agree for every module: the two views of the address space are consistent.
TEST(Modules, LoadBiasMatchesDlIteratePhdr) {
  auto mods = ModuleList::of_self();
  ASSERT_TRUE(mods.ok()) << mods.error().message();
  int checked = 0;
  for (const Module& m : mods->modules()) {
    if (!m.dl_loaded) continue;
    auto bias = mods->compute_load_bias(m);
    ASSERT_TRUE(bias.ok()) << bias.error().message();
    EXPECT_EQ(*bias, m.load_bias) << m.path;
    ++checked;
  }
  EXPECT_GE(checked, 3);  // main, libc, ld.so at least
}

TEST(Modules, ResolveLibcEveryWay) {
  auto mods = ModuleList::of_self();
  ASSERT_TRUE(mods.ok()) << mods.error().message();
  const Module* libc = mods->find(key_of(libc_path()));
  ASSERT_NE(libc, nullptr);

  for (const char* spec : {"libc.so.6", "libc", "/lib/x86_64-linux-gnu/libc.so.6",
                           "/usr/lib/x86_64-linux-gnu/libc.so.6"}) {
    auto r = mods->resolve(spec);
    ASSERT_TRUE(r.ok()) << spec << ": " << r.error().message();
    EXPECT_EQ(*r, libc) << spec;
  }
  auto by_path = mods->resolve(libc->path);
  ASSERT_TRUE(by_path.ok()) << by_path.error().message();
  EXPECT_EQ(*by_path, libc);

  // A path relative to the current directory.
  char cwd[PATH_MAX];
  ASSERT_NE(::getcwd(cwd, sizeof cwd), nullptr);
  ASSERT_EQ(::chdir("/usr/lib"), 0);
  auto rel = mods->resolve("./x86_64-linux-gnu/libc.so.6");
  auto rel2 = mods->resolve("x86_64-linux-gnu/../x86_64-linux-gnu/libc.so.6");
  ASSERT_EQ(::chdir(cwd), 0);
  ASSERT_TRUE(rel.ok()) << rel.error().message();
  EXPECT_EQ(*rel, libc);
  ASSERT_TRUE(rel2.ok()) << rel2.error().message();
  EXPECT_EQ(*rel2, libc);
}

TEST(Modules, ResolveMainByEmptyAndOwnName) {
  auto mods = ModuleList::of_self();
  ASSERT_TRUE(mods.ok()) << mods.error().message();
  auto empty = mods->resolve("");
  ASSERT_TRUE(empty.ok()) << empty.error().message();
  EXPECT_TRUE((*empty)->is_main);
  auto named = mods->resolve((*empty)->name());
  ASSERT_TRUE(named.ok()) << named.error().message();
  EXPECT_EQ(*named, *empty);
  auto by_exe = mods->resolve("/proc/self/exe");
  ASSERT_TRUE(by_exe.ok()) << by_exe.error().message();
  EXPECT_EQ(*by_exe, *empty);
}

TEST(Modules, ResolveSonameDifferentFromFileName) {
  // libstdc++'s file is libstdc++.so.6.0.30 (or so); its SONAME is libstdc++.so.6. In this
  // process the loader's name already says libstdc++.so.6; seen from outside (no loader
  // names) only the SONAME in the file does.
  Dl_info info;
  ASSERT_NE(::dladdr(reinterpret_cast<void*>(&std::terminate), &info), 0);
  const ModuleKey key = key_of(info.dli_fname);
  for (bool self : {true, false}) {
    auto mods = self ? ModuleList::of_self() : ModuleList::of_process(::getpid());
    ASSERT_TRUE(mods.ok()) << mods.error().message();
    const Module* m = mods->find(key);
    ASSERT_NE(m, nullptr);
    auto elf = mods->elf(*m);
    ASSERT_TRUE(elf.ok()) << elf.error().message();
    EXPECT_EQ((*elf)->soname(), "libstdc++.so.6");
    if (m->name() == "libstdc++.so.6") GTEST_SKIP() << "file is named like its SONAME here";
    for (const char* spec : {"libstdc++.so.6", "libstdc++"}) {
      auto r = mods->resolve(spec);
      ASSERT_TRUE(r.ok()) << spec << ": " << r.error().message();
      EXPECT_EQ(*r, m) << spec << (self ? " (self)" : " (outside)");
    }
  }
}

TEST(Modules, ResolveErrorsListWhatIsLoaded) {
  auto mods = ModuleList::of_self();
  ASSERT_TRUE(mods.ok()) << mods.error().message();

  auto none = mods->resolve("libdoesnotexist");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code(), Errc::not_found);
  EXPECT_NE(none.error().message().find("no module 'libdoesnotexist'"), std::string::npos);
  EXPECT_NE(none.error().message().find("libc.so.6"), std::string::npos) << none.error().message();
  EXPECT_NE(none.error().message().find("(main)"), std::string::npos) << none.error().message();

  auto missing = mods->resolve("/no/such/lib.so");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code(), Errc::not_found);
  EXPECT_NE(missing.error().message().find("no such file"), std::string::npos)
      << missing.error().message();

  auto not_loaded = mods->resolve("/etc/hostname");
  if (::access("/etc/hostname", F_OK) == 0) {
    ASSERT_FALSE(not_loaded.ok());
    EXPECT_EQ(not_loaded.error().code(), Errc::not_found);
    EXPECT_NE(not_loaded.error().message().find("is not loaded in this process"), std::string::npos)
        << not_loaded.error().message();
    EXPECT_NE(not_loaded.error().message().find("libc.so.6"), std::string::npos);
  }

  // "lib" is a prefix of everything but a short name of nothing ("lib." / "lib-").
  auto prefix = mods->resolve("lib");
  ASSERT_FALSE(prefix.ok());
  EXPECT_EQ(prefix.error().code(), Errc::not_found);
}

TEST(Modules, AmbiguousShortNameListsCandidates) {
  auto maps = parse_maps(
      "1000-2000 r-xp 00000000 fe:00 11 /opt/a/libfoo.so.1\n"
      "3000-4000 r-xp 00000000 fe:00 12 /opt/b/libfoo-2.0.so\n"
      "5000-6000 r-xp 00000000 fe:00 13 /opt/c/libfoobar.so\n"
      "7000-8000 r-xp 00000000 fe:00 14 /usr/bin/prog\n"
      "9000-a000 r--p 00000000 fe:00 15 /usr/lib/locale/locale-archive\n");
  ASSERT_TRUE(maps.ok()) << maps.error().message();
  ModuleList mods = ModuleList::from_maps(4242, std::move(*maps), "/usr/bin/prog");
  EXPECT_EQ(mods.modules().size(), 4u);  // the locale archive is data, not a module
  auto r = mods.resolve("libfoo");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), Errc::invalid_argument);
  const std::string& msg = r.error().message();
  EXPECT_NE(msg.find("ambiguous"), std::string::npos) << msg;
  EXPECT_NE(msg.find("/opt/a/libfoo.so.1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("/opt/b/libfoo-2.0.so"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("libfoobar"), std::string::npos) << msg;
  EXPECT_NE(msg.find("process 4242"), std::string::npos) << msg;

  // An exact name beats short names.
  auto exact = mods.resolve("libfoo.so.1");
  ASSERT_TRUE(exact.ok()) << exact.error().message();
  EXPECT_EQ((*exact)->path, "/opt/a/libfoo.so.1");
  auto bar = mods.resolve("libfoobar");
  ASSERT_TRUE(bar.ok()) << bar.error().message();
  EXPECT_EQ((*bar)->path, "/opt/c/libfoobar.so");
  auto main = mods.resolve("");
  ASSERT_TRUE(main.ok()) << main.error().message();
  EXPECT_EQ((*main)->path, "/usr/bin/prog");
  auto prog = mods.resolve("prog");
  ASSERT_TRUE(prog.ok());
  EXPECT_EQ(*prog, *main);

  ModuleList headless = ModuleList::from_maps(
      4242, std::vector<Mapping>(mods.mappings().begin(), mods.mappings().end()), "");
  auto no_main = headless.resolve("");
  ASSERT_FALSE(no_main.ok());
  EXPECT_EQ(no_main.error().code(), Errc::not_found);
  EXPECT_NE(no_main.error().message().find("main executable"), std::string::npos);
}

TEST(Modules, DlopenAppearsAndDlcloseDisappears) {
  const std::string path = fixture_lib();
  const ModuleKey key = key_of(path);
  {
    auto before = ModuleList::of_self();
    ASSERT_TRUE(before.ok()) << before.error().message();
    ASSERT_EQ(before->find(key), nullptr) << "fixture already loaded";
    auto r = before->resolve("libhp_elf_fixture.so");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().code(), Errc::not_found);
  }
  void* h = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(h, nullptr) << ::dlerror();
  {
    auto during = ModuleList::of_self();
    ASSERT_TRUE(during.ok()) << during.error().message();
    const Module* m = during->find(key);
    ASSERT_NE(m, nullptr);
    EXPECT_TRUE(m->dl_loaded);
    EXPECT_EQ(m->loader_name, path);
    for (const char* spec : {"libhp_elf_fixture.so", "libhp_elf_fixture"}) {
      auto r = during->resolve(spec);
      ASSERT_TRUE(r.ok()) << spec << ": " << r.error().message();
      EXPECT_EQ(*r, m);
    }
    auto r = during->resolve(path);
    ASSERT_TRUE(r.ok()) << r.error().message();
    EXPECT_EQ(*r, m);
  }
  auto loaded = ModuleList::of_self();
  ASSERT_TRUE(loaded.ok());
  ASSERT_EQ(::dlclose(h), 0);
  {
    auto after = ModuleList::of_self();
    ASSERT_TRUE(after.ok());
    ModuleChanges gone = diff_modules(*loaded, *after);
    EXPECT_TRUE(gone.added.empty());
    ASSERT_EQ(gone.removed.size(), 1u);
    EXPECT_EQ(gone.removed[0]->key, key);
    ModuleChanges back = diff_modules(*after, *loaded);
    ASSERT_EQ(back.added.size(), 1u);
    EXPECT_EQ(back.added[0]->key, key);
    EXPECT_TRUE(back.removed.empty());
    EXPECT_TRUE(diff_modules(*after, *after).added.empty());
    ASSERT_TRUE(after.ok()) << after.error().message();
    EXPECT_EQ(after->find(key), nullptr);
    auto r = after->resolve(path);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message().find("is not loaded"), std::string::npos) << r.error().message();
  }
}

TEST(Modules, OtherProcessByPid) {
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The child loads the fixture, says so, and waits to be killed.
    void* h = ::dlopen(fixture_lib().c_str(), RTLD_NOW);
    char c = h ? 'y' : 'n';
    ssize_t ignored = ::write(ready[1], &c, 1);
    (void)ignored;
    for (;;)
      ::pause();
  }
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ::close(ready[0]);
  ::close(ready[1]);
  ASSERT_EQ(c, 'y');
  auto mods = ModuleList::of_process(child);
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  ASSERT_TRUE(mods.ok()) << mods.error().message();
  EXPECT_FALSE(mods->is_self());
  EXPECT_EQ(mods->pid(), child);
  ASSERT_NE(mods->main(), nullptr);
  EXPECT_EQ(mods->main()->key, key_of("/proc/self/exe"));
  auto fx = mods->resolve("libhp_elf_fixture");
  ASSERT_TRUE(fx.ok()) << fx.error().message();
  EXPECT_FALSE((*fx)->dl_loaded);  // no loader cross-check from outside
  auto none = mods->resolve("nope");
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.error().message().find("process " + std::to_string(child)), std::string::npos)
      << none.error().message();

  auto gone = ModuleList::of_process(child);  // reaped: no such process
  ASSERT_FALSE(gone.ok());
  EXPECT_EQ(gone.error().code(), Errc::not_found);
}

TEST(Modules, OffsetAddressRoundTrip) {
  auto mods = ModuleList::of_self();
  ASSERT_TRUE(mods.ok()) << mods.error().message();
  const auto addr = reinterpret_cast<std::uintptr_t>(&hp_modules_test_function);
  const Module* main = mods->containing(addr);
  ASSERT_NE(main, nullptr);
  auto off = main->address_to_offset(addr);
  ASSERT_TRUE(off.ok()) << off.error().message();
  auto back = main->offset_to_address(*off);
  ASSERT_TRUE(back.ok()) << back.error().message();
  EXPECT_EQ(*back, addr);
  // Every mapped byte range of every module round-trips at both ends.
  for (const Module& m : mods->modules()) {
    for (const Mapping& map : m.mappings) {
      for (std::uintptr_t a : {map.start, map.end - 1}) {
        auto o = m.address_to_offset(a);
        ASSERT_TRUE(o.ok());
        auto a2 = m.offset_to_address(*o);
        ASSERT_TRUE(a2.ok());
        // A file page mapped twice (the slack between two segments that share a page)
        // maps back to another copy of the same bytes: the executable one if any.
        if (*a2 != a) {
          const Mapping* other = nullptr;
          for (const Mapping& mm : m.mappings) {
            if (mm.contains(*a2)) other = &mm;
          }
          ASSERT_NE(other, nullptr);
          EXPECT_EQ(other->offset + (*a2 - other->start), *o) << m.path;
          EXPECT_TRUE(other->executable() || !map.executable()) << m.path;
        }
      }
    }
  }
  auto far = main->offset_to_address(1ull << 40);
  ASSERT_FALSE(far.ok());
  EXPECT_EQ(far.error().code(), Errc::not_found);
  EXPECT_NE(far.error().message().find("is not mapped"), std::string::npos);
  auto outside = main->address_to_offset(8);
  ASSERT_FALSE(outside.ok());
  EXPECT_EQ(outside.error().code(), Errc::not_found);
}

// Files root reads for another process are never named by the paths in its maps, which
// are the paths of its mount namespace: here the process (in a mount namespace of its
// own) maps the fixture library bind-mounted over a path that, in ours, is a FIFO. Reading
// that path would open the FIFO and wait for a writer forever; map_files is the mapped
// file itself. A test timeout is what a regression looks like.
TEST(Modules, AnotherProcessesFilesAreNotReadByItsPaths) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (a mount namespace, map_files)";
#if defined(HOTPROBE_ASAN) || defined(HOTPROBE_TSAN)
  // The fixture library is built with the sanitizer, whose runtime refuses to be preloaded
  // into an unsanitized `sleep`: the child dies, sometimes after its maps were read.
  GTEST_SKIP() << "a sanitized fixture library cannot be preloaded into sleep(1)";
#endif
  char tmpl[] = "/tmp/hp_elf_ns_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::string planted = dir + "/libhp_planted.so";
  ASSERT_EQ(::mkfifo(planted.c_str(), 0600), 0);
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(ready[0]);
    const std::string script = "mount --make-rprivate / && mount --bind " + fixture_lib() + " " +
                               planted + " && LD_PRELOAD=" + planted +
                               " exec sleep 120 || echo failed";
    ::dup2(ready[1], 1);
    ::execlp("unshare", "unshare", "-m", "sh", "-c", script.c_str(), nullptr);
    ::_exit(127);
  }
  ::close(ready[1]);
  // Ready when the maps show the library (a condition, polled: sleep prints nothing).
  bool mapped = false;
  while (!mapped) {
    auto maps = read_proc_file("/proc/" + std::to_string(child) + "/maps");
    if (!maps.ok()) break;  // the child ended: it could not set up its namespace
    mapped = maps->find(planted) != std::string::npos;
    if (!mapped) {
      int status = 0;
      if (::waitpid(child, &status, WNOHANG) == child) break;
      ::usleep(2000);
    }
  }
  auto cleanup = [&] {
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
    ::close(ready[0]);
    ::unlink(planted.c_str());
    ::rmdir(dir.c_str());
  };
  if (!mapped) {
    cleanup();
    GTEST_SKIP() << "unshare -m with a bind mount is not available here";
  }
  auto mods = ModuleList::of_process(child);
  ASSERT_TRUE(mods.ok()) << mods.error().message();
  const Module* planted_mod = nullptr;
  for (const Module& m : mods->modules()) {
    if (m.path == planted) planted_mod = &m;
  }
  ASSERT_NE(planted_mod, nullptr);
  auto elf = mods->elf(*planted_mod);
  ASSERT_TRUE(elf.ok()) << elf.error().message();
  EXPECT_EQ((*elf)->soname(), "libhp_elf_fixture.so");
  auto bytes = mods->read_file_bytes(*planted_mod, 0, 4);
  ASSERT_TRUE(bytes.ok()) << bytes.error().message();
  EXPECT_EQ((*bytes)[1], 'E');
  cleanup();
}

// A path a user gives that is, or leads to, something other than a regular file is
// refused before it is opened (a device's open can have effects; a FIFO's waits).
TEST(Modules, NonRegularFilesAreRefusedUnopened) {
  char tmpl[] = "/tmp/hp_elf_nonreg_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  const std::string fifo = dir + "/libfifo.so", dev = dir + "/libdev.so";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  ASSERT_EQ(::symlink("/dev/zero", dev.c_str()), 0);
  auto f = load_elf(fifo);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.error().code(), Errc::invalid_argument);
  EXPECT_NE(f.error().message().find("is a FIFO"), std::string::npos) << f.error().message();
  auto d = load_elf(dev);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.error().message().find("is a character device"), std::string::npos)
      << d.error().message();
  // Even with the right key (as from a process's maps), the open does not wait.
  struct stat st;
  ASSERT_EQ(::stat(fifo.c_str(), &st), 0);
  auto keyed = load_elf(ModuleKey{st.st_dev, st.st_ino}, fifo);
  ASSERT_FALSE(keyed.ok());
  EXPECT_NE(keyed.error().message().find("is a FIFO"), std::string::npos);
  auto no_follow = open_regular_file(dev, {}, /*no_follow=*/true);
  ASSERT_FALSE(no_follow.ok());
  EXPECT_NE(no_follow.error().message().find("symbolic link"), std::string::npos)
      << no_follow.error().message();
  ::unlink(fifo.c_str());
  ::unlink(dev.c_str());
  ::rmdir(dir.c_str());
}

}  // namespace
}  // namespace hp::elf
