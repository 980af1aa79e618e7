// The traced program of the `args` conformance cases, built with -g: functions taking
// integers of several sizes, a string, a struct pointer and a struct by value, each
// called with the same values on every run.
#include <stdio.h>

struct inner {
  short x;
  unsigned char y;
};
struct item {
  int id;
  char name[12];
  struct inner in;
  long vals[2];
  struct item* next;
};
struct pair {
  int lo;
  int hi;
};

#define KEEP __attribute__((noinline, used))

KEEP long take_ints(int a, long b, unsigned char c, short d) {
  __asm__ volatile("" : : : "memory");
  return a + b + c + d;
}
KEEP long take_str(const char* s, int n) {
  __asm__ volatile("" : : : "memory");
  return s[0] + n;
}
KEEP long take_item(struct item* it, int k) {
  __asm__ volatile("" : : : "memory");
  return it->id + k;
}
KEEP long take_pair(struct pair p, int k) {
  __asm__ volatile("" : : : "memory");
  return p.lo + p.hi + k;
}

int main(void) {
  static struct item items[3];
  static const char* const words[] = {"alpha", "beta", "gamma"};
  for (int i = 0; i < 3; i++) {
    items[i].id = 10 * i - 5;
    snprintf(items[i].name, sizeof items[i].name, "item-%d", i);
    items[i].in.x = (short)(-300 * i);
    items[i].in.y = (unsigned char)(200 + i);
    items[i].vals[0] = 1000L * i;
    items[i].vals[1] = -7L * i;
    items[i].next = &items[(i + 1) % 3];
  }
  long sum = 0;
  for (int k = 0; k < 6; k++) {
    sum += take_ints(k - 3, 100000L * k, (unsigned char)(250 + k), (short)(-k));
    sum += take_str(words[k % 3], k);
    sum += take_item(&items[k % 3], k);
    struct pair p = {k, -2 * k};
    sum += take_pair(p, k);
  }
  return sum == 12345 ? 1 : 0;
}
