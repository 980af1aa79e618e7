// script_bench: ns per call of a compiled Program's handlers, called directly with fake
// registers (no engine, no trampoline): the cost the script layer adds to a hit.
//   count: uprobe /arg0 > 10/ { @[arg0] = count(); }          (16 distinct keys)
//   latency: @start[tid] = nsecs on entry; hist(nsecs - @start[tid]) and delete on return
//   latency without the clock: arg0 and retval for nsecs (the map accesses alone)
//   printf: printf("%d %s\n", arg0, "x") to a sink that drops it
//   nsecs: the clock alone (@t = nsecs is not timed; the builtin through a predicate)
//   ustack: @[ustack] = count() on a 10-frame rbp chain, beside @ = count(); and by CFI
//     (HOTPROBE_USTACK=cfi) on a chain of real functions built without frame pointers,
//     at the same depth
// Minimum and median of 7 runs of 2M calls each. docs/design/script-runtime.md records them.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "script/eval.h"
#include "script/program.h"
#include "script/run_stack.h"
#include "script/unwind_table.h"

using namespace hotprobe;
using namespace hotprobe::script;

namespace {

struct NullSink : Sink {
  std::size_t bytes = 0;
  void write(std::string_view t) override { bytes += t.size(); }
  void request_exit() override {}
};

template <typename F>
void run(const char* name, F&& body) {
  constexpr int kRuns = 7, kCalls = 2'000'000;
  std::vector<double> ns;
  for (int r = 0; r < kRuns; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kCalls; ++i)
      body(i);
    const auto t1 = std::chrono::steady_clock::now();
    ns.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count() / kCalls);
  }
  std::sort(ns.begin(), ns.end());
  std::printf("%-48s min %6.2f ns  median %6.2f ns\n", name, ns.front(), ns[kRuns / 2]);
}

std::unique_ptr<Program> compile(const char* src, NullSink& sink) {
  auto p = Program::compile(src);
  if (!p) {
    std::fprintf(stderr, "%s\n", p.error().message().c_str());
    std::exit(1);
  }
  (*p)->bind(&sink);
  return std::move(*p);
}

// A chain of real functions (-O2: no frame pointers), the innermost handing its own
// registers to `body`, which runs while the chain is there.
using ChainBody = void (*)(const Regs&);
[[gnu::noipa]] int cfi_leaf(ChainBody body, int x) {
  Regs r{};
  asm volatile("lea 0(%%rip), %0\n\tmov %%rsp, %1\n\tmov %%rbp, %2"
               : "=r"(r.rip), "=r"(r.rsp), "=r"(r.rbp));
  body(r);
  asm volatile("");
  return x + 1;
}
template <int N>
[[gnu::noipa]] int cfi_chain(ChainBody body, int x) {
  if constexpr (N == 1) {
    return cfi_leaf(body, x) * 3 + x;
  } else {
    return cfi_chain<N - 1>(body, x + 1) * 3 + x;  // not a tail call: the frame stays
  }
}

// @[ustack(N)] by CFI with N the frames of the rbp row: the chain's frames and those of
// its callers (main, libc's start), as many as the rbp row walks.
void cfi_rows(std::uint32_t frames) {
  static std::uint32_t depth;
  depth = frames;
  unwind::set_mode(unwind::Mode::cfi);
  cfi_chain<9>(
      [](const Regs& r) {
        static NullSink sink;
        Regs regs = r;
        Hit hit;
        hit.regs = &regs;
        hit.probe_address = reinterpret_cast<std::uint64_t>(&std::printf);
        char src[96];
        std::snprintf(src, sizeof src, "uprobe:libc:getpid { @[ustack(%u)] = count(); }", depth);
        for (unwind::Mode m : {unwind::Mode::cfi, unwind::Mode::automatic}) {
          unwind::set_mode(m);
          auto p = compile(src, sink);
          ProbeSpec s = p->spec(0);  // builds the tables
          std::uint64_t out[1 + 127];
          capture_ustack(r, false, 127, out);
          std::printf("(the CFI chain walks %llu frames)\n",
                      static_cast<unsigned long long>(out[0]));
          hit.cookie = s.cookie;
          char name[96];
          std::snprintf(name, sizeof name, "@[ustack(%u)] = count(), CFI (%s)", depth,
                        m == unwind::Mode::cfi ? "cfi" : "auto");
          run(name, [&](int) { s.on_entry(hit); });
        }
      },
      0);
  unwind::set_mode(unwind::Mode::fp);
}

}  // namespace

int main() {
  NullSink sink;
  Regs regs{};
  Hit hit;
  hit.regs = &regs;
  {
    auto p = compile("uprobe:libc:getpid /arg0 > 10/ { @[arg0] = count(); }", sink);
    ProbeSpec s = p->spec(0);
    hit.cookie = s.cookie;
    run("count by arg with predicate (pass)", [&](int i) {
      regs.rdi = 11 + (i & 15);
      s.on_entry(hit);
    });
    run("count by arg with predicate (fail)", [&](int i) {
      regs.rdi = i & 7;
      s.on_entry(hit);
    });
  }
  {
    auto p = compile(
        "uprobe:libc:getpid { @start[tid] = nsecs; }"
        "uretprobe:libc:getpid /@start[tid]/ { @lat = hist(nsecs - @start[tid]);"
        " delete(@start[tid]); }",
        sink);
    ProbeSpec e = p->spec(0), r = p->spec(1);
    Hit he = hit, hr = hit;
    he.cookie = e.cookie;
    hr.cookie = r.cookie;
    run("latency pair: entry + return (per pair)", [&](int) {
      e.on_entry(he);
      r.on_return(hr);
    });
  }
  {
    // The same maps without the clock: what the map accesses themselves cost.
    auto p = compile(
        "uprobe:libc:getpid { @start[tid] = arg0 + 1; }"
        "uretprobe:libc:getpid /@start[tid]/ { @lat = hist(retval - @start[tid]);"
        " delete(@start[tid]); }",
        sink);
    ProbeSpec e = p->spec(0), r = p->spec(1);
    Hit he = hit, hr = hit;
    he.cookie = e.cookie;
    hr.cookie = r.cookie;
    run("latency pair without the clock (arg0, retval)", [&](int i) {
      regs.rdi = static_cast<std::uint64_t>(i);
      e.on_entry(he);
      r.on_return(hr);
    });
  }
  {
    auto p = compile("uprobe:libc:getpid { printf(\"%d %s\\n\", arg0, \"x\"); }", sink);
    ProbeSpec s = p->spec(0);
    hit.cookie = s.cookie;
    run("printf to a null sink", [&](int i) {
      regs.rdi = i;
      s.on_entry(hit);
    });
  }
  {
    auto p = compile("uprobe:libc:getpid /nsecs == 0/ { exit(); }", sink);
    ProbeSpec s = p->spec(0);
    hit.cookie = s.cookie;
    run("nsecs (in a predicate)", [&](int) { s.on_entry(hit); });
  }
  {
    // A 10-frame rbp chain on this thread's stack, as a probed function 10 calls deep
    // with frame pointers leaves it: [saved rbp, return address] per frame, the last
    // saved rbp 0. The probe address is an entry (`push %rbp` or not, looked up once).
    std::uint64_t frames[10][2];
    for (int k = 0; k < 10; ++k) {
      frames[k][0] = k + 1 < 10 ? reinterpret_cast<std::uint64_t>(frames[k + 1]) : 0;
      frames[k][1] = 0x401000 + 0x40 * static_cast<std::uint64_t>(k);
    }
    Regs sregs = regs;
    sregs.rsp = reinterpret_cast<std::uint64_t>(frames[0]);
    sregs.rbp = reinterpret_cast<std::uint64_t>(frames[0]);
    sregs.rip = 0x400ff0;
    Hit shit = hit;
    shit.regs = &sregs;
    shit.probe_address = reinterpret_cast<std::uint64_t>(&std::printf);
    auto plain = compile("uprobe:libc:getpid { @ = count(); }", sink);
    auto stack = compile("uprobe:libc:getpid { @[ustack] = count(); }", sink);
    auto stack8 = compile("uprobe:libc:getpid { @[ustack(8)] = count(); }", sink);
    std::uint64_t walked[1 + 127];
    capture_ustack(sregs, true, 127, walked);
    std::printf("(the rbp chain walks %llu frames)\n", static_cast<unsigned long long>(walked[0]));
    for (auto* p : {plain.get(), stack.get(), stack8.get()}) {
      ProbeSpec s = p->spec(0);
      shit.cookie = s.cookie;
      const char* name = p == plain.get()   ? "@ = count() (beside ustack)"
                         : p == stack.get() ? "@[ustack] = count(), 10 frames"
                                            : "@[ustack(8)] = count(), 10 frames";
      run(name, [&](int) { s.on_entry(shit); });
    }
    asm volatile("" : : "r"(frames) : "memory");  // the chain stays until the runs end
    cfi_rows(static_cast<std::uint32_t>(walked[0]));
  }
  std::printf("clock: %s\n", clock_uses_tsc() ? "tsc (calibrated)" : "vdso");
  std::printf("(sink received %zu bytes)\n", sink.bytes);
}
