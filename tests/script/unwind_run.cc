// ustack by CFI end to end: `hotprobe run` with HOTPROBE_USTACK on a ten-frame chain built
// without frame pointers (every frame named, and libc's malloc under it shows the chain),
// and on the same chain with frame pointers, where the CFI walk gives bpftrace's frames.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "support/run_command.h"

namespace {

hp::test::CommandResult hotprobe(const std::string& mode, const std::string& script,
                                 const std::string& bin) {
  hp::test::Command c{{HP_HOTPROBE, "run", "-e", script, "--", bin, "3"}};
  c.env = {{"HOTPROBE_AGENT", HP_AGENT}, {"HOTPROBE_USTACK", mode}};
  return hp::test::run_command(c);
}

// The frame lines of the first stack key printed ("    c10+0" ...), up to its "]".
std::vector<std::string> frames(const std::string& out, const std::string& first) {
  std::vector<std::string> v;
  std::size_t p = out.find("    " + first);
  while (p != std::string::npos && out.compare(p, 4, "    ") == 0) {
    const std::size_t e = out.find('\n', p);
    v.push_back(out.substr(p + 4, e - p - 4));
    p = e == std::string::npos ? e : e + 1;
  }
  return v;
}

const std::string kNoFp = HP_UNWIND_NOFP, kFp = HP_UNWIND_FP;

TEST(UnwindRun, CfiNamesEveryFrameWithoutFramePointers) {
  const std::string script = "uprobe:" + kNoFp + ":c10 { @[ustack] = count(); }";
  for (const char* mode : {"auto", "cfi"}) {
    auto r = hotprobe(mode, script, kNoFp);
    ASSERT_EQ(r.code, 0) << r.err;
    const auto f = frames(r.out, "c10+0");
    ASSERT_GE(f.size(), 12u) << mode << "\n" << r.out;
    for (int i = 1; i <= 9; ++i)
      EXPECT_EQ(f[static_cast<std::size_t>(i)].rfind("c" + std::to_string(10 - i) + "+", 0), 0u)
          << mode << " frame " << i << "\n"
          << r.out;
    EXPECT_EQ(f[10].rfind("main+", 0), 0u) << r.out;
    EXPECT_EQ(f[11].rfind("__libc_start_call_main+", 0), 0u) << r.out;
    EXPECT_NE(r.out.find("]: 3\n"), std::string::npos) << r.out;
    // libc's frames above it by their names, without symbol versions (@@GLIBC_2.34).
    EXPECT_EQ(r.out.find("@@"), std::string::npos) << r.out;
  }
  // The frame-pointer walk (the default) loses the chain: no rbp links it.
  auto r = hotprobe("fp", script, kNoFp);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out.find("    c5+"), std::string::npos) << r.out;
}

TEST(UnwindRun, ABadModeIsAnError) {
  auto r = hotprobe("frames", "uprobe:" + kNoFp + ":c10 { @[ustack] = count(); }", kNoFp);
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("HOTPROBE_USTACK=frames is not a stack walk: use fp"), std::string::npos)
      << r.err;
}

TEST(UnwindRun, LibcMallocShowsItsCallers) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "the fixture is built with a sanitizer here, whose malloc replaces libc's";
#endif
  auto r = hotprobe("auto", "uprobe:libc:malloc { @[ustack(5)] = count(); }", kNoFp);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto f = frames(r.out, "__libc_malloc+0\n    c10+");
  ASSERT_EQ(f.size(), 5u) << r.out;
  EXPECT_EQ(f[1].rfind("c10+", 0), 0u);
  EXPECT_EQ(f[2].rfind("c9+", 0), 0u);
  EXPECT_EQ(f[4].rfind("c7+", 0), 0u);
}

// With frame pointers the CFI walk's frames are the rbp walk's (which
// tests/conformance holds to bpftrace's), then it goes on where the rbp chain ends in
// libc (__libc_start_call_main keeps no frame pointer): bpftrace itself when it runs here.
TEST(UnwindRun, WithFramePointersCfiGivesTheFramePointerFrames) {
  const std::string script = "uprobe:" + kFp + ":c10 { @[ustack] = count(); } uprobe:" + kFp +
                             ":done { print(@); clear(@); }";
  auto fp = hotprobe("fp", script, kFp);
  auto cfi = hotprobe("auto", script, kFp);
  ASSERT_EQ(fp.code, 0) << fp.err;
  ASSERT_EQ(cfi.code, 0) << cfi.err;
  const auto a = frames(fp.out, "c10+0"), b = frames(cfi.out, "c10+0");
  ASSERT_EQ(a.size(), 12u) << fp.out;
  ASSERT_GE(b.size(), a.size()) << cfi.out;
  EXPECT_EQ(std::vector<std::string>(b.begin(), b.begin() + 12), a) << cfi.out;

  hp::test::Command v{{"bpftrace", "-e", "BEGIN { exit(); }"}};
  if (hp::test::run_command(v).code != 0) GTEST_SKIP() << "bpftrace cannot run here";
  hp::test::Command bt{{"bpftrace", "-e", script, "-c", kFp + " 3"}};
  auto r = hp::test::run_command(bt);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(frames(r.out, "c10+0"), a) << r.out;
}

}  // namespace
