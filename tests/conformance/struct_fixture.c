// The traced program of the C-type conformance cases: a ring of five nodes, each visited
// 20 times through visit(), whose argument scripts read as (struct node *)arg0. Every run
// makes the same calls with the same values.
#include <stdint.h>
#include <stdio.h>
#include <string.h>

struct inner {
  short x;
  unsigned char y;
};
struct node {
  int id;
  char name[16];
  struct inner in;
  long vals[3];
  struct node* next;
  unsigned int flag : 1;
  int level : 4;
  union {
    unsigned int w;
    unsigned char b[4];
  } u;
};

__attribute__((noinline, used)) long visit(struct node* n) {
  __asm__ volatile("" : : "r"(n) : "memory");
  return n->id;
}

int main(void) {
  static struct node nodes[5];
  for (int i = 0; i < 5; i++) {
    struct node* n = &nodes[i];
    n->id = i - 2;
    snprintf(n->name, sizeof n->name, "node-%d", i);
    n->in.x = (short)(-1000 * i);
    n->in.y = (unsigned char)(250 + i);
    for (int k = 0; k < 3; k++) n->vals[k] = (long)(i * 100 + k) * (k == 1 ? -1 : 1);
    n->next = &nodes[(i + 1) % 5];
    n->flag = (unsigned)(i & 1);
    n->level = i - 3;
    n->u.w = 0x01020304u * (unsigned)(i + 1);
  }
  long sum = 0;
  for (int k = 0; k < 100; k++) sum += visit(&nodes[k % 5]);
  return sum == 0 ? 0 : 1;  // the ids sum to 0 per ring
}
