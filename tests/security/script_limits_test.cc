// Scripts cannot crash anything: the parser refuses what nests too deeply (with the
// position, in bpftrace's diagnostic format), and whatever it accepts compiles, lowers and
// runs within a small stack. The deepest accepted script of every shape is compiled and run
// on a thread whose whole stack is 64 KiB (painted, to measure the high-water mark), as an
// agent thread or a probed thread with a small stack would.
#include <pthread.h>
#include <sys/mman.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>

#include "script/check.h"
#include "script/parser.h"
#include "script/program.h"

namespace hotprobe::script {
namespace {

struct TextSink : Sink {
  std::string out;
  void write(std::string_view text) override { out += text; }
  void request_exit() override {}
};

std::string repeat(std::string_view s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i)
    out += s;
  return out;
}

// The error of compiling `src` ("" if it compiles).
std::string compile_error(const std::string& src) {
  auto p = Program::compile(src, CompileOptions{"stdin", OutputFormat::text});
  return p ? std::string() : p.error().message();
}

// What BEGIN (and END) print.
std::string run_text(const std::string& src) {
  auto p = Program::compile(src, CompileOptions{"stdin", OutputFormat::text});
  EXPECT_TRUE(p.ok()) << (p ? "" : p.error().message().substr(0, 400));
  if (!p) return "<error>";
  TextSink sink;
  (*p)->bind(&sink);
  (*p)->run_begin();
  (*p)->run_end();
  return sink.out;
}

// Runs `fn` on a thread whose stack is `size` bytes of painted memory above a guard page;
// returns how many bytes of it were written (the high-water mark, glibc's thread
// descriptor and TLS at the top included).
std::size_t stack_used(std::size_t size, const std::function<void()>& fn) {
  const std::size_t guard = 4096;
  void* mem =
      mmap(nullptr, size + guard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  EXPECT_NE(mem, MAP_FAILED);
  if (mem == MAP_FAILED) return size;
  mprotect(mem, guard, PROT_NONE);
  auto* base = static_cast<unsigned char*>(mem) + guard;
  std::memset(base, 0xa5, size);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstack(&attr, base, size);
  pthread_t t;
  auto trampoline = [](void* arg) -> void* {
    (*static_cast<const std::function<void()>*>(arg))();
    return nullptr;
  };
  EXPECT_EQ(pthread_create(&t, &attr, trampoline, const_cast<std::function<void()>*>(&fn)), 0);
  pthread_join(t, nullptr);
  pthread_attr_destroy(&attr);
  std::size_t untouched = 0;
  while (untouched < size && base[untouched] == 0xa5)
    ++untouched;
  munmap(mem, size + guard);
  return size - untouched;
}

// The largest n for which make(n) parses (n from 1 up; the limits are small).
int deepest(const std::function<std::string(int)>& make, int limit = 5000) {
  int n = 1;
  while (n < limit && parse(make(n + 1), "stdin").ok())
    ++n;
  return n;
}

TEST(ScriptLimits, TenThousandParenthesesAreASyntaxErrorWithItsPosition) {
  const std::string src = "BEGIN { @x = " + repeat("(", 10000) + "1" + repeat(")", 10000) + "; }";
  const std::string err = compile_error(src);
  // The block is level 1 and the assigned expression level 2; the expression inside the
  // 31st '(' would be level 33, and is reported at its first token, the 32nd '(' (column
  // 13 + 32).
  EXPECT_EQ(err.substr(0, err.find('\n')),
            "stdin:1:45-46: ERROR: syntax error, nested too deeply: more than 32 levels of "
            "parentheses, map keys, calls, operators and blocks (assign inner parts to "
            "$variables first)");
}

TEST(ScriptLimits, TwentyThousandTermSumIsASyntaxErrorWithItsPosition) {
  std::string sum = "1";
  for (int i = 1; i < 20000; ++i)
    sum += "+1";
  const std::string err = compile_error("BEGIN { @x = " + sum + "; }");
  // The 1024th '+' makes the tree 1025 deep: it is at column 13 + 2 * 1024.
  EXPECT_EQ(err.substr(0, err.find('\n')),
            "stdin:1:2061-2062: ERROR: syntax error, expression too deep: more than 1024 "
            "operands in one chain of operators (split it: $a = first part; then $a + the "
            "rest)");
}

TEST(ScriptLimits, ThousandTermChainsCompileAndComputeLikeTheTree) {
  std::string sum = "1";
  for (int i = 2; i <= 1000; ++i)
    sum += "+" + std::to_string(i);
  EXPECT_EQ(run_text("BEGIN { printf(\"%d\\n\", " + sum + "); }"), "500500\n");
  // + and - of one chain (one precedence level), left to right, wrapping as int64 does.
  std::string mixed = "7";
  std::uint64_t want = 7;
  for (int i = 1; i <= 600; ++i) {
    const std::uint64_t v = static_cast<std::uint64_t>(i) * 7919 % 100003;
    mixed += (i % 3 ? " + " : " - ") + std::to_string(v);
    want = i % 3 ? want + v : want - v;
  }
  EXPECT_EQ(run_text("BEGIN { printf(\"%d\\n\", " + mixed + "); }"),
            std::to_string(static_cast<std::int64_t>(want)) + "\n");
  std::string product = "3";
  std::uint64_t prod = 3;
  for (int i = 1; i <= 300; ++i) {
    product += " * " + std::to_string(i % 7 + 2);
    prod *= static_cast<std::uint64_t>(i % 7 + 2);
  }
  EXPECT_EQ(run_text("BEGIN { printf(\"%d\\n\", " + product + "); }"),
            std::to_string(static_cast<std::int64_t>(prod)) + "\n");
  // && and || short-circuit inside a long chain: $n counts the operands evaluated.
  EXPECT_EQ(run_text("BEGIN { $n = 0; $r = 1 && 1 && 1 && 1 && 1 && 1 && 1 && 1 && 0 && $n++ "
                     "&& $n++ && $n++; printf(\"%d %d\\n\", $r, $n); }"),
            "0 0\n");
  EXPECT_EQ(run_text("BEGIN { $n = 0; $r = 0 || 0 || 0 || 0 || 0 || 0 || 0 || 0 || 5 || $n++ "
                     "|| $n++; printf(\"%d %d\\n\", $r, $n); }"),
            "1 0\n");
  EXPECT_EQ(run_text("BEGIN { printf(\"%d\\n\", 1 < 2 < 3 < 4 < 5 < 6 < 7 < 8 < 9 == 1 != 0); }"),
            "1\n");
  EXPECT_EQ(run_text("BEGIN { printf(\"%d\\n\", 100 - 1 - 2 - 3 - 4 - 5 - 6 - 7 - 8 - 9 - 10); }"),
            "45\n");
}

// Every shape nested as deeply as the parser accepts.
struct Shape {
  const char* name;
  std::function<std::string(int)> make;
};

const std::vector<Shape>& shapes() {
  static const std::vector<Shape> s = {
      {"parentheses",
       [](int n) { return "BEGIN { @x = " + repeat("(", n) + "1" + repeat(")", n) + "; }"; }},
      {"unary", [](int n) { return "BEGIN { @x = " + repeat("~", n) + "1; }"; }},
      {"map keys",
       [](int n) {
         return "BEGIN { @m[1] = 1; @x = " + repeat("@m[", n) + "1" + repeat("]", n) + "; }";
       }},
      {"ternaries", [](int n) { return "BEGIN { @x = " + repeat("pid ? 2 : ", n) + "3; }"; }},
      {"right operands",
       [](int n) { return "BEGIN { @x = " + repeat("1 + (", n) + "1" + repeat(")", n) + "; }"; }},
      {"blocks",
       [](int n) {
         return "BEGIN { " + repeat("if (1) { ", n) + "@x = 1; " + repeat("} ", n) + "}";
       }},
      {"else if",
       [](int n) {
         return "BEGIN { if (pid) { @x = 1; } " + repeat("else if (pid) { @x = 2; } ", n) +
                "else { @x = 3; } }";
       }},
      {"string comparisons",
       [](int n) {
         std::string s = "comm";
         for (int i = 0; i < n; ++i)
           s = "(" + s + " == \"a\" ? \"a\" : \"b\")";
         return "BEGIN { @x = " + s + " == \"a\"; }";
       }},
      {"predicate",
       [](int n) {
         return "uprobe:libc:malloc /" + repeat("(arg0 > 1) && (", n) + "1" + repeat(")", n) +
                "/ { @x = 1; }";
       }},
      {"chains in parentheses",
       [](int n) {
         std::string sum = "1";
         for (int i = 1; i < 900; ++i)
           sum += "+1";
         return "BEGIN { @x = " + repeat("(2 * ", n) + sum + repeat(")", n) + "; }";
       }},
  };
  return s;
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
// Sanitizers widen every frame several times over: the shapes still run, on a larger
// stack, and the bound is checked by the plain builds.
constexpr std::size_t kStack = 1024 * 1024;
constexpr bool kStackBoundChecked = false;
#else
constexpr std::size_t kStack = 64 * 1024;
constexpr bool kStackBoundChecked = true;
#endif

TEST(ScriptLimits, DeepestScriptOfEveryShapeRunsInA64KiBStack) {
  std::size_t worst = 0;
  for (const Shape& shape : shapes()) {
    const int n = deepest(shape.make);
    const std::string src = shape.make(n);
    SCOPED_TRACE(std::string(shape.name) + " x" + std::to_string(n));
    EXPECT_FALSE(parse(shape.make(n + 1), "stdin").ok());
    std::string err = "not run";
    const std::size_t used = stack_used(kStack, [&] {
      auto p = Program::compile(src, CompileOptions{"stdin", OutputFormat::text});
      err = p ? "" : p.error().message();
      if (!p) return;
      TextSink sink;
      (*p)->bind(&sink);
      (*p)->run_begin();
      (*p)->run_end();
      for (std::size_t i = 0; i < (*p)->probes().size(); ++i)
        (*p)->run_interval(i);  // uprobe actions too, with no registers
      (void)(*p)->print_maps();
    });
    EXPECT_EQ(err.substr(0, 300), "");
    std::printf("  %-22s nested %4d: %6zu bytes of stack\n", shape.name, n, used);
    worst = std::max(worst, used);
  }
  // Parse errors of the 10,000-deep kind too.
  const std::size_t refused = stack_used(kStack, [] {
    (void)compile_error("BEGIN { @x = " + repeat("(", 10000) + "1" + repeat(")", 10000) + "; }");
    (void)compile_error("BEGIN { @x = " + repeat("1+", 20000) + "1; }");
    (void)compile_error("BEGIN { @x = " + repeat("-", 10000) + "1; }");
    (void)compile_error("BEGIN { " + repeat("if (1) { ", 10000) + "}");
  });
  std::printf("  %-22s            %6zu bytes of stack\n", "refused", refused);
  worst = std::max(worst, refused);
  // glibc's own use of a thread's stack (its descriptor, static TLS) is not the script's.
  const std::size_t baseline = stack_used(kStack, [] {});
  std::printf("  %-22s            %6zu bytes of stack\n", "thread baseline", baseline);
  if (kStackBoundChecked) {
    EXPECT_LT(worst - baseline, kStack / 2) << "the script layer took over half of a 64 KiB stack";
  }
}

TEST(ScriptLimits, PrintfTakesAtMost32Values) {
  std::string fmt, args;
  for (int i = 0; i < 32; ++i)
    fmt += "%d ", args += ", " + std::to_string(i + 1);
  EXPECT_EQ(run_text("BEGIN { printf(\"" + fmt + "\\n\"" + args + "); }").substr(0, 20),
            "1 2 3 4 5 6 7 8 9 10");
  const std::string err = compile_error("BEGIN { printf(\"" + fmt + "%d\\n\"" + args + ", 33); }");
  EXPECT_NE(err.find("ERROR: printf() can only take up to 32 arguments after its format (33 "
                     "provided): split it into several printf() calls"),
            std::string::npos)
      << err;
}

TEST(ScriptLimits, NestedUnrollsAreBounded) {
  EXPECT_EQ(compile_error("BEGIN { unroll(100) { unroll(100) { @x++; } } }"), "");
  const std::string err =
      compile_error("BEGIN { unroll(100) { unroll(100) { unroll(2) { @x++; } } } }");
  EXPECT_NE(err.find("unroll nested too deeply: 20000 iterations in all, at most 10000"),
            std::string::npos)
      << err;
}

}  // namespace
}  // namespace hotprobe::script
