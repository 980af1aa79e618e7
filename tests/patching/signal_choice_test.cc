// The move signal: only a real-time signal the program neither handles nor ignores.
// HOTPROBE_SIGNAL values that would take a signal over from the program are refused
// with a message that names the way out; the default moves aside when the program uses
// it.
#include <signal.h>

#include <string>

#include <gtest/gtest.h>

#include "core/text_patch.h"

namespace {

using hp::core::choose_move_signal;

void handler(int) {}

// Installs a handler for `sig` for the scope (the program "handles" it).
class Handled {
 public:
  explicit Handled(int sig) : sig_(sig) {
    struct sigaction sa {};
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sigaction(sig_, &sa, &old_);
  }
  ~Handled() { sigaction(sig_, &old_, nullptr); }

 private:
  int sig_;
  struct sigaction old_ {};
};

void expect_refused(const char* value, hp::Errc code, const std::string& says) {
  auto r = choose_move_signal(value);
  ASSERT_FALSE(r.ok()) << value << " was accepted as " << *r;
  EXPECT_EQ(r.error().code(), code) << r.error().message();
  EXPECT_NE(r.error().message().find(says), std::string::npos) << r.error().message();
  EXPECT_NE(r.error().message().find("HOTPROBE_SIGNAL="), std::string::npos) << r.error().message();
}

TEST(MoveSignal, RefusesSigsegv) {
  expect_refused("11", hp::Errc::invalid_argument, "(SIGSEGV) is not a real-time signal");
}

TEST(MoveSignal, RefusesSigint) {
  expect_refused("2", hp::Errc::invalid_argument, "(SIGINT) is not a real-time signal");
}

TEST(MoveSignal, RefusesWhatIsNotANumber) {
  expect_refused("abc", hp::Errc::invalid_argument, "is not a signal number");
  expect_refused("40x", hp::Errc::invalid_argument, "is not a signal number");
  expect_refused("-5", hp::Errc::invalid_argument, "is not a signal number");
}

TEST(MoveSignal, RefusesOutOfRange) {
  expect_refused("0", hp::Errc::invalid_argument, "is not a real-time signal");
  expect_refused("65", hp::Errc::invalid_argument, "is not a real-time signal");
  expect_refused("99999999999", hp::Errc::invalid_argument, "");
}

TEST(MoveSignal, RefusesRealTimeSignalTheProgramHandles) {
  const int sig = SIGRTMIN + 5;
  Handled h(sig);
  expect_refused(std::to_string(sig).c_str(), hp::Errc::busy,
                 "the program already handles signal " + std::to_string(sig));
}

TEST(MoveSignal, RefusesRealTimeSignalTheProgramIgnores) {
  const int sig = SIGRTMIN + 6;
  struct sigaction ign {
  }, old{};
  ign.sa_handler = SIG_IGN;
  sigaction(sig, &ign, &old);
  expect_refused(std::to_string(sig).c_str(), hp::Errc::busy, "already handles");
  sigaction(sig, &old, nullptr);
}

TEST(MoveSignal, AcceptsFreeRealTimeSignal) {
  const int sig = SIGRTMIN + 7;
  auto r = choose_move_signal(std::to_string(sig).c_str());
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(*r, sig);
}

TEST(MoveSignal, DefaultIsSigrtmaxMinus3) {
  auto r = choose_move_signal(nullptr);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(*r, SIGRTMAX - 3);
  auto empty = choose_move_signal("");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*empty, SIGRTMAX - 3);
}

TEST(MoveSignal, DefaultMovesAsideWhenTheProgramUsesIt) {
  Handled a(SIGRTMAX - 3);
  Handled b(SIGRTMAX);
  auto r = choose_move_signal(nullptr);
  ASSERT_TRUE(r.ok()) << r.error().message();
  EXPECT_EQ(*r, SIGRTMAX - 1);
}

TEST(MoveSignal, NoneFreeIsAnError) {
  std::vector<std::unique_ptr<Handled>> all;
  for (int sig = SIGRTMIN; sig <= SIGRTMAX; sig++)
    all.push_back(std::make_unique<Handled>(sig));
  auto r = choose_move_signal(nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("every real-time signal"), std::string::npos);
}

// Through apply_patches, in a fresh process (the choice is made once per process): the
// refusal comes back through the Result, nothing is patched, and nothing dies.
TEST(MoveSignalDeathTest, ApplyReportsARefusedSignal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        hp::core::request_move_signal(11);  // EngineOptions::move_signal, unchecked
        hp::core::PatchSite none;
        auto r = hp::core::apply_patches({&none, 0});
        if (r.ok()) std::_Exit(1);
        std::fprintf(stderr, "%s\n", r.error().message().c_str());
        std::_Exit(hp::core::move_signal_number() == 0 ? 3 : 2);
      },
      testing::ExitedWithCode(3), "HOTPROBE_SIGNAL=11 \\(SIGSEGV\\) is not a real-time signal");
}

}  // namespace
