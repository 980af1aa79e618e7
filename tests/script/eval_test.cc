// The evaluator through Program::compile: handlers called via their ProbeSpec with fake
// registers, output captured by a fake Sink. Expected texts are bpftrace 0.17's.
#include <gtest/gtest.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

#include "script/eval.h"
#include "script/program.h"

#include "script_harness.h"

namespace hotprobe::script {
namespace {

using harness::Script;

TEST(Eval, CountByArgWithPredicate) {
  Script s("uprobe:libc:getpid /arg0 > 10/ { @[arg0] = count(); }");
  ASSERT_TRUE(s.prog);
  ASSERT_EQ(s.prog->probes().size(), 1u);
  EXPECT_TRUE(s.prog->spec(0).on_entry);
  EXPECT_FALSE(s.prog->spec(0).on_return);
  for (int i = 0; i < 3; ++i)
    s.hit(0, 20);
  s.hit(0, 5);
  s.hit(0, 11);
  EXPECT_EQ(s.maps(), "\n\n@[11]: 1\n@[20]: 3\n");
}

TEST(Eval, LatencyPairWithStartMap) {
  Script s(
      "uprobe:libc:getpid { @start[tid] = nsecs; }"
      "uretprobe:libc:getpid /@start[tid]/ { @lat = hist(nsecs - @start[tid]); "
      "delete(@start[tid]); @n = count(); }");
  ASSERT_TRUE(s.prog);
  EXPECT_TRUE(s.prog->spec(1).on_return);
  s.hit(1);  // a return without entry: @start[tid] reads 0, predicate false
  for (int i = 0; i < 4; ++i) {
    s.hit(0);
    s.hit(1);
  }
  const std::string m = s.maps();
  EXPECT_NE(m.find("@lat: \n"), std::string::npos) << m;
  EXPECT_NE(m.find("@n: 4\n"), std::string::npos) << m;
  EXPECT_EQ(m.find("@start"), std::string::npos) << m;  // deleted: prints as an empty map
}

TEST(Eval, EveryAggregation) {
  Script s(
      "BEGIN { @c = count(); @c = count(); @s = sum(5); @s = sum(-2); @a = avg(4); @a = avg(5);"
      " @mi = min(3); @mi = min(-7); @ma = max(3); @ma = max(9); @st = stats(3); @st = stats(4);"
      " @h = hist(5); @h = hist(100); @l = lhist(7, 0, 100, 10); @l = lhist(150, 0, 100, 10);"
      " @x = 5; @x += 2; @str = \"hello\"; @k[\"z\"] = 3; @k[\"a\"] = 3; @k[\"m\"] = 1; }");
  ASSERT_TRUE(s.prog);
  s.prog->run_begin();
  EXPECT_EQ(s.maps(),
            "\n\n@a: 4\n\n@c: 2\n"
            "@h: \n"
            "[4, 8)                 1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n"
            "[8, 16)                0 |                                                    |\n"
            "[16, 32)               0 |                                                    |\n"
            "[32, 64)               0 |                                                    |\n"
            "[64, 128)              1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n"
            "\n"
            "@k[m]: 1\n@k[a]: 3\n@k[z]: 3\n"
            "@l: \n"
            "[0, 10)                1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n"
            "[10, 20)               0 |                                                    |\n"
            "[20, 30)               0 |                                                    |\n"
            "[30, 40)               0 |                                                    |\n"
            "[40, 50)               0 |                                                    |\n"
            "[50, 60)               0 |                                                    |\n"
            "[60, 70)               0 |                                                    |\n"
            "[70, 80)               0 |                                                    |\n"
            "[80, 90)               0 |                                                    |\n"
            "[90, 100)              0 |                                                    |\n"
            "[100, ...)             1 |@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|\n"
            "\n"
            "@ma: 9\n@mi: -7\n@s: 3\n@st: count 2, average 3, total 7\n\n@str: hello\n@x: 7\n");
}

TEST(Eval, ClearZeroDeletePrint) {
  Script s(
      "BEGIN { @x[1] = count(); @x[2] = count(); delete(@x[1]); print(@x);"
      " @w[1] = count(); zero(@w); print(@w); @y[1] = 5; clear(@y); print(@y);"
      " printf(\"end\\n\"); }");
  ASSERT_TRUE(s.prog);
  s.prog->run_begin();
  EXPECT_EQ(s.sink.out, "@x[2]: 1\n@w[1]: 0\n\nend\n");
}

TEST(Eval, PrintfConversions) {
  Script s(
      "BEGIN { printf(\"[%d][%x][%lx][%u][%lu][%ld][%p][%p][%10s][%-10s|][%08x][%5c][%X][%o]"
      "[%hd][%hhu][%.3s][%5.1d][%-4d|][%%]\\n\", 5000000000, -1, -1, -1, -1, -1, 0, -1, \"ab\","
      " \"cd\", 255, 66, 3054, 64, 70000, 300, \"abcdef\", 7, 3); }");
  ASSERT_TRUE(s.prog);
  s.prog->run_begin();
  // Copied from bpftrace 0.17.
  EXPECT_EQ(s.sink.out,
            "[705032704][ffffffff][ffffffffffffffff][4294967295][18446744073709551615][-1][(nil)]"
            "[0xffffffffffffffff][        ab][cd        |][000000ff][    B][BEE][100][4464][44]"
            "[abc][    7][3   |][%]\n");
}

TEST(Eval, PrintValueArithmeticAndIf) {
  Script s(
      "BEGIN { print(-7); print(\"hey\"); print(-7 / 2); print(7 / 0); print(7 % 0);"
      " print(-1 < 1); print(-8 >> 1); print(1 ? 2 : 3); $v = 3; if ($v > 2) { print(10); }"
      " else { print(20); } if ($v == 0) { print(30); } else if ($v == 3) { print(40); }"
      " $s = \"a\"; print($s == \"a\" ? \"yes\" : \"no\"); $v++; print($v); @m[1] = 2; @m[1]++;"
      " print(@m[1]); print(@m[9]); }");
  ASSERT_TRUE(s.prog);
  s.prog->run_begin();
  EXPECT_EQ(
      s.sink.out,
      "-7\nhey\n9223372036854775804\n0\n0\n1\n9223372036854775804\n2\n10\n40\nyes\n4\n3\n0\n");
}

TEST(Eval, Builtins) {
  Script s(
      "uprobe:libc:getpid { printf(\"%d %d %d %d %s|%s|%s|%d %d %d\\n\", arg0, arg1, tid, pid,"
      " comm, func, probe, cpu >= 0, uid, gid); }"
      "uretprobe:libc:getpid { printf(\"ret %d\\n\", retval); }");
  ASSERT_TRUE(s.prog);
  s.hit(0, 7, 8);
  s.hit(1, 0, 0, 42);
  char comm[16] = {};
  pthread_getname_np(pthread_self(), comm, sizeof comm);
  const std::string expect = "7 8 " + std::to_string(syscall(SYS_gettid)) + " " +
                             std::to_string(getpid()) + " " + comm +
                             "|getpid|uprobe:libc:getpid|1 " + std::to_string(getuid()) + " " +
                             std::to_string(getgid()) + "\nret 42\n";
  // probe text: as the front end expands it.
  EXPECT_EQ(s.sink.out.substr(s.sink.out.find("|getpid|")), expect.substr(expect.find("|getpid|")))
      << s.sink.out;
  EXPECT_EQ(s.sink.out.substr(0, s.sink.out.find('|')), expect.substr(0, expect.find('|')));
}

TEST(Eval, NsecsAndElapsed) {
  Script s("BEGIN { @t = nsecs; @e = elapsed; }");
  ASSERT_TRUE(s.prog);
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  const std::int64_t before = ts.tv_sec * 1'000'000'000ll + ts.tv_nsec;
  s.prog->run_begin();
  clock_gettime(CLOCK_MONOTONIC, &ts);
  const std::int64_t after = ts.tv_sec * 1'000'000'000ll + ts.tv_nsec;
  const std::string m = s.maps();
  const std::int64_t e = std::stoll(m.substr(m.find("@e: ") + 4));
  const std::int64_t t = std::stoll(m.substr(m.find("@t: ") + 4));
  // The TSC clock agrees with CLOCK_MONOTONIC within 1 ms.
  EXPECT_GE(t, before - 1'000'000);
  EXPECT_LE(t, after + 1'000'000);
  EXPECT_GE(e, 0);
  EXPECT_LT(e, 1'000'000'000);
}

TEST(Eval, StrNeverFaults) {
  static const char kHello[] = "hello world";
  Script s(
      "uprobe:libc:getpid { printf(\"[%s][%s][%s]\\n\", str(arg0), str(arg1), str(arg0, 5)); }");
  ASSERT_TRUE(s.prog);
  s.hit(0, reinterpret_cast<std::uint64_t>(kHello), 8);  // 8: unmapped
  s.hit(0, 0, 0xdead000000000000ull);
  EXPECT_EQ(s.sink.out, "[hello world][][hell]\n[][][]\n");
}

TEST(Eval, StrOfAString) {
  // A copy, cut to the length (lowered as a read through a pointer, a hit would call a null
  // function).
  Script s(
      "BEGIN { printf(\"[%s][%s][%s][%s]\\n\", str(\"abcdef\", 4), str(\"xy\"), "
      "str(\"abc\", 0), str(str(\"abcdef\", 5), 3)); }");
  ASSERT_TRUE(s.prog);
  s.prog->run_begin();
  EXPECT_EQ(s.sink.out, "[abc][xy][][ab]\n");
}

TEST(Eval, ExitStopsOutput) {
  Script s(
      "uprobe:libc:getpid { printf(\"a\\n\"); exit(); printf(\"b\\n\"); } END { "
      "printf(\"end\\n\"); }");
  ASSERT_TRUE(s.prog);
  s.hit(0);
  s.hit(0);  // after exit(): no action runs
  EXPECT_TRUE(s.prog->exited());
  EXPECT_EQ(s.sink.exits, 1);
  s.prog->run_end();
  EXPECT_EQ(s.sink.out, "a\nend\n");
}

TEST(Eval, Json) {
  Script s(
      "BEGIN { printf(\"%d %s\\n\", 5, \"x\"); print(5); print(\"s\"); @x = 5; print(@x);"
      " @c[1, \"a\"] = count(); @s = stats(3); @a = avg(4); @h = hist(5); exit(); }",
      OutputFormat::json);
  ASSERT_TRUE(s.prog);
  s.prog->run_begin();
  EXPECT_EQ(s.sink.out,
            "{\"type\": \"printf\", \"data\": \"5 x\\n\"}\n"
            "{\"type\": \"value\", \"data\": 5}\n"
            "{\"type\": \"value\", \"data\": \"s\"}\n"
            "{\"type\": \"map\", \"data\": {\"@x\": 5}}\n");
  EXPECT_EQ(
      s.maps(),
      "{\"type\": \"stats\", \"data\": {\"@a\": 4}}\n"
      "{\"type\": \"map\", \"data\": {\"@c\": {\"1,a\": 1}}}\n"
      "{\"type\": \"hist\", \"data\": {\"@h\": [{\"min\": 4, \"max\": 7, \"count\": 1}]}}\n"
      "{\"type\": \"stats\", \"data\": {\"@s\": {\"count\": 1, \"average\": 3, \"total\": 3}}}\n"
      "{\"type\": \"map\", \"data\": {\"@x\": 5}}\n");
}

TEST(Eval, PerThreadAggregationMerged) {
  Script s("uprobe:libc:getpid { @c[arg0] = count(); @s = sum(arg1); }");
  ASSERT_TRUE(s.prog);
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&] {
      for (int i = 0; i < 1000; ++i)
        s.hit(0, i % 2, 3);
    });
  for (auto& t : ts)
    t.join();
  EXPECT_EQ(s.maps(), "\n\n@c[0]: 2000\n@c[1]: 2000\n@s: 12000\n");
}

// Which plain maps the lowering partitions by thread (every access keyed by tid alone).
std::vector<bool> per_thread_maps(std::string_view src) {
  auto ast = parse(src);
  EXPECT_TRUE(ast.ok());
  EXPECT_TRUE(check(*ast).ok());
  auto rt = lower(std::move(*ast), OutputFormat::text);
  EXPECT_TRUE(rt.ok());
  std::vector<bool> out;
  for (std::size_t i = 0; i < (*rt)->maps->size(); ++i)
    out.push_back((*rt)->maps->desc(i).per_thread);
  return out;
}

TEST(Eval, TidKeyedMapsArePerThreadOnlyWhenEveryAccessUsesTid) {
  using V = std::vector<bool>;
  EXPECT_EQ(per_thread_maps("uprobe:libc:getpid { @s[tid] = nsecs; }"
                            "uretprobe:libc:getpid /@s[tid]/ { delete(@s[tid]); }"
                            "interval:s:1 { print(@s); clear(@s); }"),
            V{true});
  EXPECT_EQ(per_thread_maps("uprobe:libc:getpid { @m[tid] = 1; @m[arg0] = 2; }"), V{false});
  EXPECT_EQ(per_thread_maps("uprobe:libc:getpid { @m[tid, 1] = 1; }"), V{false});
  EXPECT_EQ(per_thread_maps("uprobe:libc:getpid { @c[tid] = count(); }"), V{false});
  EXPECT_EQ(per_thread_maps("uprobe:libc:getpid { @n[tid] = \"x\"; @i[tid]++; }"), (V{true, true}));
  EXPECT_EQ(per_thread_maps("uprobe:libc:getpid { @s[tid] = 1; @a[@s[tid]] = 2; }"),
            (V{true, false}));
}

int gettid_now() {
  return static_cast<int>(syscall(SYS_gettid));
}

TEST(Eval, TidMapExactAcrossThreadsAndPrintedMerged) {
  Script s(
      "uprobe:libc:getpid { @start[tid] = arg0; @n[tid]++; }"
      "uretprobe:libc:getpid /@start[tid]/ { @lat = count(); delete(@start[tid]); }");
  ASSERT_TRUE(s.prog);
  constexpr int kThreads = 4;
  std::vector<int> tids(kThreads);
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t)
    ts.emplace_back([&, t] {
      tids[t] = gettid_now();
      for (int i = 0; i < 1000; ++i) {
        s.hit(0, 1 + i);
        s.hit(1);
      }
      s.hit(0, 1000000 + t);  // left set: printed
    });
  for (auto& t : ts)
    t.join();
  const std::string m = s.maps();
  EXPECT_NE(m.find("@lat: 4000\n"), std::string::npos) << m;
  for (int t = 0; t < kThreads; ++t) {
    const std::string tid = std::to_string(tids[t]);
    EXPECT_NE(m.find("@start[" + tid + "]: " + std::to_string(1000000 + t) + "\n"),
              std::string::npos)
        << m;
    EXPECT_NE(m.find("@n[" + tid + "]: 1001\n"), std::string::npos) << m;
  }
}

TEST(Eval, TidMapClearedFromAnIntervalOnAnotherThread) {
  Script s(
      "uprobe:libc:getpid { @start[tid] = 5; }"
      "interval:s:1 { clear(@start); }"
      "uretprobe:libc:getpid /@start[tid]/ { @hits = count(); }");
  ASSERT_TRUE(s.prog);
  std::atomic<int> step{0};
  std::thread worker([&] {
    s.hit(0);
    step = 1;
    while (step.load() != 2)
      std::this_thread::yield();
    s.hit(2);  // cleared meanwhile: the predicate reads 0
    s.hit(0);
    s.hit(2);  // set again: counted
  });
  while (step.load() != 1)
    std::this_thread::yield();
  EXPECT_NE(s.maps().find("@start["), std::string::npos);
  s.prog->run_interval(1);
  EXPECT_EQ(s.maps().find("@start["), std::string::npos) << s.maps();  // printer applies it
  step = 2;
  worker.join();
  const std::string m = s.maps();
  EXPECT_NE(m.find("@hits: 1\n"), std::string::npos) << m;
}

TEST(Eval, MixedKeyMapStaysGlobal) {
  // @m is keyed by tid in one place and by arg0 in another: one global map, so a value set
  // by one thread under its tid is read by another through arg0.
  Script s(
      "uprobe:libc:getpid { @m[tid] = 42; }"
      "uprobe:libc:getppid { @seen = @m[arg0]; }");
  ASSERT_TRUE(s.prog);
  int tid = 0;
  std::thread([&] {
    tid = gettid_now();
    s.hit(0);
  }).join();
  s.hit(1, static_cast<std::uint64_t>(tid));
  EXPECT_NE(s.maps().find("@seen: 42\n"), std::string::npos) << s.maps();
}

TEST(Eval, CompileErrorIsRendered) {
  auto p = Program::compile("BEGIN { @x = cont(); }");
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.error().message().find("-e:1:"), std::string::npos) << p.error().message();
}

}  // namespace
}  // namespace hotprobe::script
