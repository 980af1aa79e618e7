/* lang_bench's fixture (bench/lang_bench.py, docs/benchmarks.md, "Script language rows").
 *
 *   lang_fixture call N   calls lang_leaf(&foo) N times, the 10th frame below
 *                         lang_loop_call
 *   lang_fixture usdt N   passes a <sys/sdt.h> site (provider lang_fixture, name tick,
 *                         arg0 = i % 16) N times
 *
 * and prints "lang_fixture: N <mode> in S s, cpu C s": the loop's own wall time and the
 * thread's CPU time over it (user and system: a kernel uprobe's work is system time), so
 * that a tracer's start-up and exit are not counted. Built -O2 -g -fno-omit-frame-pointer
 * -fno-optimize-sibling-calls: every frame of the chain is a real frame a frame-pointer
 * walk sees, every function of it starts with `push %rbp` (kernel uprobes emulate it
 * rather than single-step it), and the DWARF describes lang_leaf's parameter for
 * `args.p`. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sdt.h>
#include <time.h>

struct foo {
  int a;
  int b;
};

#define HP_NOINLINE __attribute__((noinline, noipa))

/* Where lang_leaf's value goes: a call, so that lang_leaf is not a leaf and gets its
 * frame (gcc leaves it out of a leaf function that needs no stack, whatever the flags). */
HP_NOINLINE int lang_sink(int v) {
  __asm__ volatile("" : "+r"(v));
  return v;
}

/* The probed function: 10th frame of the chain, starting with `push %rbp`. */
HP_NOINLINE int lang_leaf(struct foo* p) {
  return lang_sink(p->b);
}

#define HP_LEVEL(n, next)                    \
  HP_NOINLINE int lang_d##n(struct foo* p) { \
    int r = next(p);                         \
    __asm__ volatile("" : "+r"(r));          \
    return r + 1;                            \
  }
HP_LEVEL(9, lang_leaf)
HP_LEVEL(8, lang_d9)
HP_LEVEL(7, lang_d8)
HP_LEVEL(6, lang_d7)
HP_LEVEL(5, lang_d6)
HP_LEVEL(4, lang_d5)
HP_LEVEL(3, lang_d4)
HP_LEVEL(2, lang_d3)
HP_LEVEL(1, lang_d2)

static double now(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

HP_NOINLINE long lang_loop_call(long n) {
  struct foo f = {0, 1};
  long sum = 0;
  for (long i = 0; i < n; i++) {
    f.a = (int)(i & 15);
    sum += lang_d1(&f);
  }
  return sum;
}

HP_NOINLINE long lang_loop_usdt(long n) {
  long sum = 0;
  for (long i = 0; i < n; i++) {
    long key = i & 15;
    DTRACE_PROBE1(lang_fixture, tick, key);
    __asm__ volatile("" : "+r"(sum));
    sum += key;
  }
  return sum;
}

int main(int argc, char** argv) {
  char* end = NULL;
  long n = argc == 3 ? strtol(argv[2], &end, 10) : 0;
  int call = argc == 3 && strcmp(argv[1], "call") == 0;
  int usdt = argc == 3 && strcmp(argv[1], "usdt") == 0;
  if ((!call && !usdt) || end == NULL || *end != '\0' || n <= 0) {
    fprintf(stderr, "usage: lang_fixture call|usdt N   (N > 0 iterations)\n");
    return 2;
  }
  double c0 = now(CLOCK_THREAD_CPUTIME_ID);
  double t0 = now(CLOCK_MONOTONIC);
  long sum = call ? lang_loop_call(n) : lang_loop_usdt(n);
  double t1 = now(CLOCK_MONOTONIC);
  double c1 = now(CLOCK_THREAD_CPUTIME_ID);
  printf("lang_fixture: %ld %s in %.6f s, cpu %.6f s (check %ld)\n", n, call ? "call" : "usdt",
         t1 - t0, c1 - c0, sum);
  return 0;
}
