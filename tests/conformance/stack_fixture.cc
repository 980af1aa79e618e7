// The ustack cases' program: a chain main -> outer -> ns::Mid::middle -> leaf with frame
// pointers, run a fixed number of times, then done(), where the scripts print their maps
// while the process still exists (bpftrace names user frames only while the process is
// there; at its exit dump the program is gone and it prints addresses).
#include <unistd.h>

#include <cstdlib>

extern "C" __attribute__((noinline)) int leaf(int x) {
  __asm__ volatile("");
  return x * 3 + 1;
}
namespace ns {
struct Mid {
  __attribute__((noinline)) static int middle(int x) {
    const int r = leaf(x + 1);
    __asm__ volatile("");
    return r + 2;
  }
};
}  // namespace ns
extern "C" __attribute__((noinline)) int outer(int x) {
  const int r = ns::Mid::middle(x + 2);
  __asm__ volatile("");
  return r + 5;
}
extern "C" __attribute__((noinline)) void done() {
  __asm__ volatile("");
}

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 5;
  long sum = 0;
  for (int i = 0; i < n; ++i)
    sum += outer(i);
  static volatile long sink;
  sink = sum;  // no output: the program's own lines would interleave with the tracer's
  done();
  // bpftrace prints the maps of done's print() asynchronously, naming the frames through
  // this process: it must still exist then (hotprobe names them either way).
  ::usleep(500 * 1000);
  return 0;
}
