// EngineOptions: each setting from its field; options_from_environment() reads the
// HOTPROBE_* variables for the fields left at their defaults and refuses a bad value by
// the variable's name; Engine::create reads no variable.
#include <signal.h>
#include <stdlib.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include <gtest/gtest.h>

#include "hotprobe/probe.h"

extern "C" {
int hp_opt_sink;
void* hp_opt_seen_return;
long hp_opt_fn(long a);
}
// Records the return address it was called with (a hijacking return probe changes it)
// and returns a + 1. In assembly: the same instructions in every build (no sanitizer
// check in front of the ret), so a probe on its ret can always take a jump.
asm(R"(
        .text
        .globl  hp_opt_fn
        .type   hp_opt_fn, @function
        .p2align 4
hp_opt_fn:
        mov     (%rsp), %rax
        mov     %rax, hp_opt_seen_return(%rip)
        lea     1(%rdi), %rax
        mov     %edi, hp_opt_sink(%rip)
        ret
        .size   hp_opt_fn, . - hp_opt_fn
)");
long (*volatile hp_opt_fn_ptr)(long) = hp_opt_fn;
// One caller for every call, so the return address is the same unless a probe changes it.
__attribute__((noinline)) long call_fn(long a) {
  const long r = hp_opt_fn_ptr(a);
  asm volatile("" ::: "memory");  // not a tail call: the return address is in call_fn
  return r;
}

namespace {

using hotprobe::Engine;
using hotprobe::EngineOptions;
using hotprobe::Errc;

// Sets a variable for the scope, restoring its absence after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) { setenv(name, value, 1); }
  ~ScopedEnv() { unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
};

std::atomic<long> g_returns{0};

// The return address hp_opt_fn sees with a return probe on it under `options`.
void* return_address_seen(const EngineOptions& options) {
  auto e = Engine::create(options);
  EXPECT_TRUE(e.ok()) << e.error().message();
  if (!e.ok()) return nullptr;
  hotprobe::ProbeSpec s;
  s.target = ":hp_opt_fn";
  s.on_return = [](hotprobe::Hit&) { g_returns.fetch_add(1); };
  auto h = (*e)->attach(s);
  EXPECT_TRUE(h.ok()) << h.error().message();
  const long before = g_returns.load();
  EXPECT_EQ(call_fn(1), 2);
  EXPECT_EQ(g_returns.load(), before + 1);
  if (h.ok()) {
    EXPECT_TRUE((*e)->detach(*h).ok());
  }
  return hp_opt_seen_return;
}

TEST(EngineOptions, ReturnModeOverridesEverySpec) {
  call_fn(0);
  void* plain = hp_opt_seen_return;
  EngineOptions hijack;
  hijack.return_mode = hotprobe::ReturnMode::hijack;
  EXPECT_NE(return_address_seen(hijack), plain) << "a hijacking probe left the return address";
  EngineOptions ret;
  ret.return_mode = hotprobe::ReturnMode::ret_instructions;
  EXPECT_EQ(return_address_seen(ret), plain) << "a probe on the ret changed the return address";
}

TEST(EngineOptions, ReturnModeComesFromTheEnvironmentWhenLeftUnset) {
  call_fn(0);
  void* plain = hp_opt_seen_return;
  ScopedEnv env("HOTPROBE_RETURN_PROBES", "ret");
  auto from_env = hotprobe::options_from_environment();
  ASSERT_TRUE(from_env.ok()) << from_env.error().message();
  EXPECT_EQ(return_address_seen(*from_env), plain);
  EngineOptions set;  // a value set in the options wins
  set.return_mode = hotprobe::ReturnMode::hijack;
  auto kept = hotprobe::options_from_environment(set);
  ASSERT_TRUE(kept.ok()) << kept.error().message();
  EXPECT_NE(return_address_seen(*kept), plain);
  // Engine::create reads no variable: the spec's own mode (automatic: a hijack here).
  EXPECT_NE(return_address_seen({}), plain);
}

TEST(EngineOptions, EachVariableIsParsedIntoItsField) {
  {
    ScopedEnv threads("HOTPROBE_BATCH_THREADS", "2");
    ScopedEnv debug("HOTPROBE_DEBUG", "1");
    ScopedEnv signal("HOTPROBE_SIGNAL", std::to_string(SIGRTMAX - 7).c_str());
    ScopedEnv mode("HOTPROBE_RETURN_PROBES", "hijack");
    auto o = hotprobe::options_from_environment();
    ASSERT_TRUE(o.ok()) << o.error().message();
    EXPECT_EQ(o->batch_threads, 2u);
    EXPECT_TRUE(o->debug);
    EXPECT_EQ(o->move_signal, SIGRTMAX - 7);
    EXPECT_EQ(o->return_mode, hotprobe::ReturnMode::hijack);
    EngineOptions base;  // values set in `base` win over the variables
    base.batch_threads = 1;
    base.move_signal = SIGRTMAX - 8;
    base.return_mode = hotprobe::ReturnMode::automatic;
    base.scheme = hotprobe::Scheme::srcu;
    auto kept = hotprobe::options_from_environment(base);
    ASSERT_TRUE(kept.ok()) << kept.error().message();
    EXPECT_EQ(kept->batch_threads, 1u);
    EXPECT_EQ(kept->move_signal, SIGRTMAX - 8);
    EXPECT_EQ(kept->return_mode, hotprobe::ReturnMode::automatic);
    EXPECT_EQ(kept->scheme, hotprobe::Scheme::srcu);
    EXPECT_TRUE(kept->debug);
  }
  for (const char* m : {"auto", "ret"}) {
    ScopedEnv mode("HOTPROBE_RETURN_PROBES", m);
    auto o = hotprobe::options_from_environment();
    ASSERT_TRUE(o.ok()) << o.error().message();
    EXPECT_EQ(o->return_mode, m[0] == 'a' ? hotprobe::ReturnMode::automatic
                                          : hotprobe::ReturnMode::ret_instructions);
  }
  // Unset or empty: the defaults.
  ScopedEnv empty("HOTPROBE_BATCH_THREADS", "");
  auto o = hotprobe::options_from_environment();
  ASSERT_TRUE(o.ok()) << o.error().message();
  EXPECT_EQ(o->batch_threads, 0u);
  EXPECT_FALSE(o->debug);
  EXPECT_EQ(o->move_signal, 0);
  EXPECT_FALSE(o->return_mode.has_value());
}

TEST(EngineOptions, BadEnvironmentValuesAreRefusedByName) {
  struct Bad {
    const char* name;
    const char* value;
    const char* accepted;  // what the message offers in its place
  };
  const Bad bad[] = {
      {"HOTPROBE_RETURN_PROBES", "sometimes", "auto, ret, hijack"},
      {"HOTPROBE_BATCH_THREADS", "two", "set it to 1"},
      {"HOTPROBE_BATCH_THREADS", "0", "set it to 1"},
      {"HOTPROBE_SIGNAL", "11", "Use a number from"},  // SIGSEGV: not a real-time signal
      {"HOTPROBE_SIGNAL", "rtmin", "set it to a real-time signal"},
  };
  for (const auto& [name, value, accepted] : bad) {
    ScopedEnv env(name, value);
    auto o = hotprobe::options_from_environment();
    ASSERT_FALSE(o.ok()) << name << "=" << value;
    EXPECT_EQ(o.error().code(), Errc::invalid_argument);
    const std::string m = o.error().message();
    EXPECT_NE(m.find(std::string(name) + "=" + value), std::string::npos) << m;
    EXPECT_NE(m.find(accepted), std::string::npos) << m;
    EXPECT_TRUE(Engine::create().ok()) << name << ": the engine read the variable";
  }
}

// In a fresh process (the signal is installed with the process's first patch): exits 0
// when every step went as it should, else prints the step that did not.
void move_signal_steps() {
  auto fail = [](const std::string& what) {
    std::fprintf(stderr, "%s\n", what.c_str());
    std::_Exit(1);
  };
  EngineOptions bad;
  bad.move_signal = SIGSEGV;
  auto refused = Engine::create(bad);
  if (refused.ok() || refused.error().message().find("move_signal") == std::string::npos)
    fail("SIGSEGV was not refused by name");
  // A signal asked for before the first patch is the one installed.
  EngineOptions first;
  first.move_signal = SIGRTMAX - 5;
  auto e = Engine::create(first);
  if (!e.ok()) fail(e.error().message());
  hotprobe::ProbeSpec s;
  s.target = ":hp_opt_fn";
  s.on_entry = [](hotprobe::Hit&) {};
  auto h = (*e)->attach(s);
  if (!h.ok()) fail(h.error().message());
  if (hotprobe::reserved_signal() != SIGRTMAX - 5) fail("another signal was installed");
  // Another one after it is installed is refused, naming the one in use; the same is fine.
  EngineOptions other;
  other.move_signal = SIGRTMAX - 6;
  auto busy = Engine::create(other);
  if (busy.ok() || busy.error().code() != Errc::busy ||
      busy.error().message().find(std::to_string(SIGRTMAX - 5)) == std::string::npos)
    fail("a second signal was not refused with the one in use");
  if (!Engine::create(first).ok()) fail("the same signal again was refused");
  if (!(*e)->detach(*h).ok()) fail("detach");
  std::_Exit(0);
}

TEST(EngineOptionsDeathTest, MoveSignalIsOnePerProcess) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(move_signal_steps(), testing::ExitedWithCode(0), "");
}

TEST(EngineOptions, DebugReportsEachSite) {
  EngineOptions debug;
  debug.debug = true;
  auto e = Engine::create(debug);
  ASSERT_TRUE(e.ok()) << e.error().message();
  hotprobe::ProbeSpec s;
  s.target = ":hp_opt_fn";
  s.on_entry = [](hotprobe::Hit&) {};
  testing::internal::CaptureStderr();
  auto h = (*e)->attach(s);
  const std::string said = testing::internal::GetCapturedStderr();
  ASSERT_TRUE(h.ok()) << h.error().message();
  EXPECT_NE(said.find("hp_opt_fn"), std::string::npos) << said;
  EXPECT_NE(said.find("site"), std::string::npos) << said;
  EXPECT_TRUE((*e)->detach(*h).ok());
}

}  // namespace
