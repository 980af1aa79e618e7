// ustack end to end: `hotprobe run` on a short program prints its stack keys after the
// program has exited, naming every frame from the module list the agent left in the
// shared maps (the program's own functions and libc's).
#include <gtest/gtest.h>

#include <ctime>
#include <string>
#include <vector>

#include "support/run_command.h"

namespace {

using hp::test::hotprobe;

const std::string kBin = HP_USTACK_CHAIN;

TEST(UstackRun, StacksAreNamedAfterTheProgramExits) {
  const std::string script = "uprobe:" + kBin + ":leaf { @[ustack] = count(); }" +
                             " uprobe:libc:getpid { @g[ustack(4)] = count(); }";
  auto r = hotprobe({"run", "-e", script, "--", kBin, "4"});
  ASSERT_EQ(r.code, 0) << r.err;
  // leaf starts with push %rbp: the probe is at an entry, so its caller's return address
  // at [rsp] is the second frame (as the kernel records it for bpftrace).
  EXPECT_NE(r.out.find("@[\n    leaf+0\n    middle+"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\n    outer+"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\n    main+"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\n    __libc_start_call_main+"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("]: 4\n"), std::string::npos) << r.out;
  // libc's getpid does not push %rbp: the rbp chain goes on from leaf's frame, into
  // middle; libc's name for it is its global one (__getpid), as bpftrace prints it.
  EXPECT_NE(r.out.find("@g[\n    __getpid+0\n    middle+"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("0x"), std::string::npos) << "an unnamed frame:\n" << r.out;
}

TEST(UstackRun, JsonKeysAreTheTextOfTheStack) {
  const std::string script = "uprobe:" + kBin + ":middle { @[ustack(perf, 2)] = count(); }";
  auto r = hotprobe({"run", "-o", "json", "-e", script, "--", kBin, "3"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find(" middle+0 (" + kBin + ")\\n\\t"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(" outer+"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\": 3}}}"), std::string::npos) << r.out;
}

// strftime's base is the boot (bpftrace 0.17): nsecs is since boot, so strftime of nsecs
// is now, and strftime of 0 is the boot time, in local time.
TEST(UstackRun, StrftimeOfNsecsIsNowAndOfZeroIsTheBoot) {
  auto r = hotprobe({"run", "-e",
                     "BEGIN { printf(\"<%s> <%s>\\n\", strftime(\"%Y-%m-%d %H:%M\", nsecs), "
                     "strftime(\"%Y-%m-%d %H:%M\", 0)); }",
                     "--", kBin, "1"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto text = [](std::time_t t) {
    std::tm tm{};
    localtime_r(&t, &tm);
    char buf[64];
    std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M", &tm);
    return std::string(buf);
  };
  timespec boot{};
  clock_gettime(CLOCK_BOOTTIME, &boot);
  const std::time_t now = std::time(nullptr);
  // The minute may turn between the run and this check: either minute is right.
  const bool now_ok = r.out.find("<" + text(now) + ">") != std::string::npos ||
                      r.out.find("<" + text(now - 60) + ">") != std::string::npos;
  EXPECT_TRUE(now_ok) << r.out;
  const std::time_t booted = now - boot.tv_sec;
  const bool boot_ok = r.out.find("> <" + text(booted) + ">") != std::string::npos ||
                       r.out.find("> <" + text(booted - 60) + ">") != std::string::npos ||
                       r.out.find("> <" + text(booted + 60) + ">") != std::string::npos;
  EXPECT_TRUE(boot_ok) << r.out;
}

}  // namespace
