// USDT semaphores (core/usdt_semaphore.h): a probe behind PROVIDER_NAME_ENABLED() runs only
// while a consumer probes its site; the semaphore counts consumers and is back to 0 after
// the last detach, in this program and in a library loaded after the attach.
#include <dlfcn.h>

#include <atomic>
#include <string>

#include <gtest/gtest.h>

#include "hotprobe/probe.h"

extern "C" {
extern unsigned short hpu_guarded_semaphore;  // fixture/usdt_guarded.c
int hpu_guarded(long i);                      // 1 when the guarded site ran
}

namespace {

std::atomic<long> g_hits{0};
void on_hit(hotprobe::Hit&) {
  g_hits.fetch_add(1, std::memory_order_relaxed);
}

hotprobe::ProbeSpec spec_of(std::string target) {
  hotprobe::ProbeSpec s;
  s.target = std::move(target);
  s.on_entry = on_hit;
  return s;
}

unsigned semaphore() {
  return __atomic_load_n(&hpu_guarded_semaphore, __ATOMIC_RELAXED);
}

class Semaphore : public ::testing::Test {
 protected:
  void SetUp() override { g_hits = 0; }
};

TEST_F(Semaphore, RaisedWhileAttachedBackToZeroAfterDetach) {
  auto e = hotprobe::Engine::create();
  ASSERT_TRUE(e.ok()) << e.error().message();
  ASSERT_EQ(semaphore(), 0u);
  EXPECT_EQ(hpu_guarded(1), 0);
  auto a = (*e)->attach(spec_of(":usdt:hpu:guarded"));
  ASSERT_TRUE(a.ok()) << a.error().message();
  EXPECT_EQ(semaphore(), 1u);
  auto b = (*e)->attach(spec_of(":usdt:guarded"));  // a second consumer of the site
  ASSERT_TRUE(b.ok()) << b.error().message();
  EXPECT_EQ(semaphore(), 2u);
  EXPECT_EQ(hpu_guarded(2), 1);
  EXPECT_EQ(g_hits.load(), 2);
  ASSERT_TRUE((*e)->detach(*a).ok());
  EXPECT_EQ(semaphore(), 1u);
  EXPECT_EQ(hpu_guarded(3), 1);
  ASSERT_TRUE((*e)->detach(*b).ok());
  EXPECT_EQ(semaphore(), 0u);
  EXPECT_EQ(hpu_guarded(4), 0);
  EXPECT_EQ(g_hits.load(), 3);
}

TEST_F(Semaphore, EngineDestroyedDetachesAndLowersIt) {
  {
    auto e = hotprobe::Engine::create();
    ASSERT_TRUE(e.ok()) << e.error().message();
    auto a = (*e)->attach(spec_of(":usdt:hpu:guarded"));
    ASSERT_TRUE(a.ok()) << a.error().message();
    EXPECT_EQ(semaphore(), 1u);
  }
  EXPECT_EQ(semaphore(), 0u);
  EXPECT_EQ(hpu_guarded(1), 0);
}

TEST_F(Semaphore, LibraryLoadedAfterTheAttach) {
  auto e = hotprobe::Engine::create();
  ASSERT_TRUE(e.ok()) << e.error().message();
  auto a = (*e)->attach(spec_of(std::string(HP_USDT_LATER) + ":usdt:hpl:guarded"));
  ASSERT_TRUE(a.ok()) << a.error().message();
  void* lib = dlopen(HP_USDT_LATER, RTLD_NOW);
  ASSERT_NE(lib, nullptr) << dlerror();
  auto* sem = static_cast<unsigned short*>(dlsym(lib, "hpl_guarded_semaphore"));
  auto* fire = reinterpret_cast<int (*)(long)>(dlsym(lib, "hpl_fire"));
  ASSERT_NE(sem, nullptr);
  ASSERT_NE(fire, nullptr);
  EXPECT_EQ(*sem, 1u);
  EXPECT_EQ(fire(1), 1);
  EXPECT_EQ(g_hits.load(), 1);
  ASSERT_TRUE((*e)->detach(*a).ok());
  EXPECT_EQ(*sem, 0u);
  EXPECT_EQ(fire(2), 0);
  EXPECT_EQ(g_hits.load(), 1);
  dlclose(lib);
}

}  // namespace
