// count_calls: a small service-like program that probes its own hottest function while
// its worker threads run, the way a performance engineer would hook a counting probe
// onto a production hot path. It counts calls by argument (entry probe) and draws a
// latency histogram (entry + return probe), in bpftrace's output format, then reports
// what the probes cost per call.
//
//   count_calls [--seconds N] [--threads N] [--scheme tasks-trace|srcu|...]
#include <hotprobe/probe.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

volatile unsigned long g_sink;

// The hot function: work proportional to `size`, with a skewed size distribution.
extern "C" __attribute__((noinline, used)) unsigned long handle_request(unsigned long size) {
  unsigned long h = size;
  for (unsigned long i = 0; i < size * 8; i++)
    h = h * 31 + i;
  g_sink = h;
  return h;
}

std::uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::uint64_t(ts.tv_sec) * 1000000000u + std::uint64_t(ts.tv_nsec);
}

// Per-thread aggregation, merged when printed: a hit writes no shared cache line.
struct alignas(64) ThreadAgg {
  std::array<std::uint64_t, 64> by_size{};  // count by argument (sizes are < 64)
  std::array<std::uint64_t, 64> hist{};     // log2 latency buckets
  ThreadAgg* next = nullptr;
};
std::atomic<ThreadAgg*> g_aggs{nullptr};
thread_local ThreadAgg* t_agg = nullptr;

ThreadAgg& agg() {
  if (!t_agg) {
    t_agg = new ThreadAgg;
    t_agg->next = g_aggs.load();
    while (!g_aggs.compare_exchange_weak(t_agg->next, t_agg)) {
    }
  }
  return *t_agg;
}

void on_entry(hotprobe::Hit& h) {
  agg().by_size[h.regs->arg(0) & 63]++;
  if (h.data) *h.data = now_ns();
}
void on_return(hotprobe::Hit& h) {
  std::uint64_t ns = now_ns() - *h.data;
  agg().hist[ns ? 63 - __builtin_clzll(ns) : 0]++;
}

// bpftrace's hist() format: [lo, hi) buckets in powers of two with @ bars.
std::string bucket_label(int b) {
  auto fmt = [](std::uint64_t v) {
    const char* units[] = {"", "K", "M", "G"};
    int u = 0;
    while (v >= 1024 && v % 1024 == 0 && u < 3)
      v /= 1024, u++;
    return std::to_string(v) + units[u];
  };
  return "[" + fmt(std::uint64_t{1} << b) + ", " + fmt(std::uint64_t{1} << (b + 1)) + ")";
}

void print_hist(const char* name, const std::array<std::uint64_t, 64>& h) {
  std::printf("%s:\n", name);
  int lo = 64, hi = -1;
  std::uint64_t top = 0;
  for (int b = 0; b < 64; b++) {
    if (h[b]) lo = std::min(lo, b), hi = std::max(hi, b), top = std::max(top, h[b]);
  }
  for (int b = lo; b <= hi; b++) {
    int bar = top ? int(h[b] * 52 / top) : 0;
    std::printf("%-20s %7lu |%-52s|\n", bucket_label(b).c_str(), (unsigned long)h[b],
                std::string(bar, '@').c_str());
  }
  std::printf("\n");
}

std::uint64_t thread_cpu_ns() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return std::uint64_t(ts.tv_sec) * 1000000000u + std::uint64_t(ts.tv_nsec);
}

// Runs the workers for `seconds`; returns the CPU time they spent, in seconds (CPU time,
// not wall time: on a shared machine other processes' time would otherwise count).
double run_workers(int threads, double seconds, std::uint64_t* calls_out) {
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> calls{0}, cpu_ns{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; t++) {
    ts.emplace_back([&, t] {
      std::uint64_t c0 = thread_cpu_ns();
      std::mt19937 rng(t + 1);
      std::geometric_distribution<unsigned> size(0.3);  // skewed: small sizes dominate
      std::uint64_t n = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        for (int i = 0; i < 256; i++)
          handle_request(std::min(size(rng), 63u));
        n += 256;
      }
      cpu_ns += thread_cpu_ns() - c0;
      calls += n;
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& th : ts)
    th.join();
  *calls_out = calls.load();
  return double(cpu_ns.load()) / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 1.0;
  int threads = 2;
  hotprobe::Scheme scheme = hotprobe::Scheme::tasks_trace;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf(
          "usage: count_calls [--seconds N] [--threads N] [--scheme NAME]\n"
          "Probes its own handle_request() while worker threads call it; prints calls\n"
          "by argument and a latency histogram in bpftrace's format.\n");
      return 0;
    } else if (a == "--seconds" && i + 1 < argc) {
      seconds = std::atof(argv[++i]);
    } else if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (a == "--scheme" && i + 1 < argc) {
      auto s = hotprobe::parse_scheme(argv[++i]);
      if (!s.ok()) {
        std::fprintf(stderr, "count_calls: %s\n", s.error().message().c_str());
        return 2;
      }
      scheme = *s;
    } else {
      std::fprintf(stderr, "count_calls: unknown option '%s' (see --help)\n", a.c_str());
      return 2;
    }
  }
  if (seconds <= 0 || threads <= 0) {
    std::fprintf(stderr, "count_calls: --seconds and --threads must be positive\n");
    return 2;
  }

  std::uint64_t base_calls = 0;
  double base_s = run_workers(threads, seconds, &base_calls);

  hotprobe::EngineOptions opts;
  opts.scheme = scheme;
  auto engine = hotprobe::Engine::create(opts);
  if (!engine.ok()) {
    std::fprintf(stderr, "count_calls: %s\n", engine.error().message().c_str());
    return 1;
  }
  hotprobe::ProbeSpec spec;
  spec.target = ":handle_request";
  spec.on_entry = &on_entry;
  spec.on_return = &on_return;
  spec.vector_registers = false;  // the handlers use no SSE
  auto t_attach = now_ns();
  auto handles = (*engine)->attach(spec);
  t_attach = now_ns() - t_attach;
  if (!handles.ok()) {
    std::fprintf(stderr, "count_calls: attach %s: %s\n", spec.target.c_str(),
                 handles.error().message().c_str());
    return 1;
  }
  std::printf(
      "Attached uprobe+uretprobe to handle_request (%s, %lu probe(s)) in %.1f us; "
      "tracing %d threads for %.1f s...\n\n",
      std::string(hotprobe::to_string(scheme)).c_str(), (unsigned long)handles->size(),
      t_attach / 1e3, threads, seconds);
  std::uint64_t probed_calls = 0;
  double probed_s = run_workers(threads, seconds, &probed_calls);
  auto t_detach = now_ns();
  if (auto r = (*engine)->detach(*handles); !r.ok()) {
    std::fprintf(stderr, "count_calls: detach: %s\n", r.error().message().c_str());
    return 1;
  }
  t_detach = now_ns() - t_detach;

  std::array<std::uint64_t, 64> by_size{}, hist{};
  for (ThreadAgg* a = g_aggs.load(); a; a = a->next) {
    for (int i = 0; i < 64; i++)
      by_size[i] += a->by_size[i], hist[i] += a->hist[i];
  }
  std::uint64_t counted = 0;
  std::vector<std::pair<std::uint64_t, int>> rows;
  for (int i = 0; i < 64; i++) {
    counted += by_size[i];
    if (by_size[i]) rows.push_back({by_size[i], i});
  }
  std::sort(rows.begin(), rows.end());  // bpftrace prints maps sorted by value
  for (auto& [n, size] : rows)
    std::printf("@calls[%d]: %lu\n", size, (unsigned long)n);
  std::printf("\n");
  print_hist("@latency_ns", hist);

  auto st = (*engine)->stats();
  double base_ns = base_s * 1e9 / double(base_calls);
  double probed_ns = probed_s * 1e9 / double(probed_calls);
  std::printf("calls counted by the probe: %lu; calls made while attached: %lu%s\n",
              (unsigned long)counted, (unsigned long)probed_calls,
              counted == probed_calls ? " (exact)" : " (MISMATCH)");
  std::printf(
      "CPU ns per call: %.1f untraced, %.1f traced (+%.1f ns per call for entry+return "
      "probes, their handlers and two clock reads)\n",
      base_ns, probed_ns, probed_ns - base_ns);
  std::printf(
      "detach: %.1f us; sites: %lu jmp, %lu int3; sync-core rounds %lu; grace periods %lu\n",
      t_detach / 1e3, (unsigned long)st.sites_jmp, (unsigned long)st.sites_int3,
      (unsigned long)st.sync_core_rounds, (unsigned long)st.grace_periods);
  return counted == probed_calls ? 0 : 1;
}
