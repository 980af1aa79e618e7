// The engine's internal probes (module watcher, unwinder hooks) live while some engine
// does: when the last one is destroyed, the process's code is the files' bytes again
// (what `hotprobe attach` promises when its session ends).
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "hotprobe/probe.h"
#include "hotprobe/symbols.h"

extern "C" __attribute__((noinline, used)) long hp_lt_add(long a, long b) {
  __atomic_store_n(&a, a, __ATOMIC_RELAXED);
  return a + b;
}

namespace {

// "" when `target`'s first 16 bytes in memory are the file's; else what differs.
std::string differs_from_file(const std::string& target) {
  auto fns = hotprobe::resolve_functions(target);
  if (!fns.ok() || fns->empty()) return "";  // not in this process: nothing to compare
  const auto& f = (*fns)[0];
  unsigned char file[16], mem[16];
  int fd = ::open(f.module.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "cannot open " + f.module;
  ssize_t n = ::pread(fd, file, sizeof file, static_cast<off_t>(f.file_offset));
  ::close(fd);
  if (n != sizeof file) return "cannot read " + f.module;
  std::memcpy(mem, reinterpret_cast<const void*>(f.address), sizeof mem);
  return std::memcmp(file, mem, sizeof file) == 0 ? "" : target + " is patched";
}

const std::vector<std::string> kInternal = {"ld-linux-x86-64.so.2:_dl_debug_state",
                                            "libgcc_s:_Unwind_RaiseException",
                                            "libgcc_s:_Unwind_Backtrace"};

TEST(EngineLifetime, LastEngineTakesTheInternalProbesOff) {
  for (const auto& t : kInternal)
    ASSERT_EQ(differs_from_file(t), "") << "before any engine";
  {
    auto e = hotprobe::Engine::create();
    ASSERT_TRUE(e.ok()) << e.error().message();
    hotprobe::ProbeSpec s;
    s.target = ":hp_lt_add";
    s.on_entry = [](hotprobe::Hit&) {};
    s.on_return = [](hotprobe::Hit&) {};
    auto h = (*e)->attach(s);
    ASSERT_TRUE(h.ok()) << h.error().message();
    EXPECT_EQ(hp_lt_add(2, 3), 5);
    // While an engine lives, the module watcher is in place.
    EXPECT_NE(differs_from_file(kInternal[0]), "");
    {
      // A second engine ending leaves the first one's internal probes alone.
      auto e2 = hotprobe::Engine::create();
      ASSERT_TRUE(e2.ok());
    }
    EXPECT_NE(differs_from_file(kInternal[0]), "");
    ASSERT_TRUE((*e)->detach(*h).ok());
    EXPECT_NE(differs_from_file(kInternal[0]), "") << "the engine is still alive";
  }
  for (const auto& t : kInternal)
    EXPECT_EQ(differs_from_file(t), "") << "after the last engine";
  // And a new engine puts them back.
  auto e = hotprobe::Engine::create();
  ASSERT_TRUE(e.ok());
  EXPECT_NE(differs_from_file(kInternal[0]), "");
}

}  // namespace
