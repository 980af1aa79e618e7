// demo_service: a small service-like workload to trace with `hotprobe run` (and with
// bpftrace, for comparison). Worker threads serve requests; each request has a route
// (0..15, skewed: route r is about twice as likely as route r+1) and a payload size,
// and goes through parse_request -> handle_request -> (lookup_cache | compute) ->
// send_response. Everything is deterministic: each worker draws from its own seeded
// generator, so the calls per route are the same on every run whatever the scheduling,
// and the program prints them at the end for tests to compare.
//
//   demo_service [--threads N] [--requests N-per-thread] [--quiet] [--sleep-ms N]
//
// The hot functions are plain extern "C" functions kept out of line, as in a real
// service binary with a symbol table.
#include <pthread.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {
constexpr int kRoutes = 16;
volatile unsigned long g_sink;
}  // namespace

extern "C" {

// A request's payload: hashed in proportion to its size.
__attribute__((noinline, used)) unsigned long compute(unsigned long size) {
  unsigned long h = size;
  for (unsigned long i = 0; i < size; i++) h = h * 31 + i;
  g_sink = h;
  return h;
}

// Even routes hit the cache: a short, fixed amount of work.
__attribute__((noinline, used)) unsigned long lookup_cache(unsigned long key) {
  g_sink = key * 2654435761u;
  return g_sink;
}

__attribute__((noinline, used)) long parse_request(const char* line) {
  long route = 0;
  while (*line >= '0' && *line <= '9') route = route * 10 + (*line++ - '0');
  return route;
}

__attribute__((noinline, used)) void send_response(long route, unsigned long bytes) {
  g_sink = static_cast<unsigned long>(route) + bytes;
}

// The hottest function: one call per request; arg0 is the route, arg1 the payload size.
__attribute__((noinline, used)) unsigned long handle_request(long route, unsigned long size) {
  unsigned long r = (route % 2 == 0) ? lookup_cache(static_cast<unsigned long>(route))
                                     : compute(size);
  send_response(route, size);
  return r;
}
}

namespace {

struct Options {
  int threads = 2;
  long requests = 200000;  // per thread
  int sleep_ms = 0;        // before starting (lets a tracer attach)
  bool quiet = false;
};

// A skewed route: route r with probability about 2^-(r+1).
int pick_route(std::uint64_t& state) {
  state = state * 6364136223846793005ull + 1442695040888963407ull;
  std::uint64_t x = state >> 33;
  int r = 0;
  while (r < kRoutes - 1 && (x & 1)) {
    ++r;
    x >>= 1;
  }
  return r;
}

void worker(int index, long requests, std::array<long, kRoutes>* counts) {
  std::uint64_t state = 0x9e3779b97f4a7c15ull * static_cast<std::uint64_t>(index + 1);
  char line[32];
  for (long i = 0; i < requests; i++) {
    int r = pick_route(state);
    std::snprintf(line, sizeof line, "%d GET /", r);
    long route = parse_request(line);
    unsigned long size = 16 + static_cast<unsigned long>(r) * 8;
    handle_request(route, size);
    ++(*counts)[static_cast<std::size_t>(route)];
  }
}

int usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s [--threads N] [--requests N-per-thread] [--sleep-ms N] [--quiet]\n",
               argv0);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto value = [&](long lo, long hi) -> long {
      if (i + 1 >= argc) std::exit(usage(argv[0]));
      char* end = nullptr;
      long v = std::strtol(argv[++i], &end, 10);
      if (*end != '\0' || v < lo || v > hi) {
        std::fprintf(stderr, "%s: bad value '%s' for %s (%ld..%ld)\n", argv[0], argv[i],
                     a.c_str(), lo, hi);
        std::exit(2);
      }
      return v;
    };
    if (a == "--threads") {
      o.threads = static_cast<int>(value(1, 256));
    } else if (a == "--requests") {
      o.requests = value(0, 1L << 40);
    } else if (a == "--sleep-ms") {
      o.sleep_ms = static_cast<int>(value(0, 3600000));
    } else if (a == "--quiet") {
      o.quiet = true;
    } else if (a == "--help" || a == "-h") {
      usage(argv[0]);
      return 0;
    } else {
      return usage(argv[0]);
    }
  }
  if (o.sleep_ms) std::this_thread::sleep_for(std::chrono::milliseconds(o.sleep_ms));
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::array<long, kRoutes>> counts(static_cast<std::size_t>(o.threads));
  std::vector<std::thread> workers;
  for (int t = 0; t < o.threads; t++) {
    counts[static_cast<std::size_t>(t)].fill(0);
    workers.emplace_back(worker, t, o.requests, &counts[static_cast<std::size_t>(t)]);
  }
  for (auto& w : workers) w.join();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!o.quiet) {
    std::printf("demo_service: %d threads x %ld requests in %.3f s\n", o.threads, o.requests,
                secs);
    for (int r = 0; r < kRoutes; r++) {
      long total = 0;
      for (const auto& c : counts) total += c[static_cast<std::size_t>(r)];
      if (total) std::printf("route %d: %ld\n", r, total);
    }
  }
  return 0;
}
