// int3 mode: the trap table and the SIGTRAP hook (core/int3_mode.h).
#include "core/int3_mode.h"

#include <ucontext.h>

#include <algorithm>
#include <atomic>

#include "base/compiler.h"
#include "core/dispatch.h"
#include "hotprobe/regs.h"
#include "sync/tasks_trace.h"

namespace hp::core {
namespace {

using hotprobe::Regs;

// int3-mode sites by address, for the SIGTRAP hook: an immutable sorted array replaced
// whole under Registry::mu_ and read inside a tasks-trace read section (the old array is
// freed after a tasks-trace grace period: I1 matches I2).
struct Int3Table {
  std::vector<std::pair<std::uintptr_t, Site*>> entries;
};
std::atomic<Int3Table*> g_int3_table{nullptr};

}  // namespace

HP_DISPATCH_SECTION std::uintptr_t int3_hook(std::uintptr_t trap, void* ucv) {
  if (!g_int3_table.load(std::memory_order_relaxed)) return 0;  // no int3 site yet
  sync::ReadGuard guard(sync::tasks_trace());
  Int3Table* t = g_int3_table.load(std::memory_order_acquire);  // I2: matches I1
  if (!t) return 0;
  auto it = std::lower_bound(t->entries.begin(), t->entries.end(), trap,
                             [](const auto& e, std::uintptr_t a) { return e.first < a; });
  if (it == t->entries.end() || it->first != trap) return 0;
  Site* site = it->second;
  auto* uc = static_cast<ucontext_t*>(ucv);
  greg_t* g = uc->uc_mcontext.gregs;
  Regs r{};
  r.rax = g[REG_RAX], r.rcx = g[REG_RCX], r.rdx = g[REG_RDX], r.rsi = g[REG_RSI],
  r.rdi = g[REG_RDI];
  r.r8 = g[REG_R8], r.r9 = g[REG_R9], r.r10 = g[REG_R10], r.r11 = g[REG_R11];
  r.rbx = g[REG_RBX], r.rbp = g[REG_RBP], r.r12 = g[REG_R12], r.r13 = g[REG_R13],
  r.r14 = g[REG_R14];
  r.r15 = g[REG_R15], r.rflags = g[REG_EFL], r.rsp = g[REG_RSP];
  r.rip = site->probe_address;
  entry_dispatcher(site->scheme)(site, &r);
  g[REG_RAX] = r.rax, g[REG_RCX] = r.rcx, g[REG_RDX] = r.rdx, g[REG_RSI] = r.rsi,
  g[REG_RDI] = r.rdi;
  g[REG_R8] = r.r8, g[REG_R9] = r.r9, g[REG_R10] = r.r10, g[REG_R11] = r.r11;
  g[REG_RBX] = r.rbx, g[REG_RBP] = r.rbp, g[REG_R12] = r.r12, g[REG_R13] = r.r13,
  g[REG_R14] = r.r14;
  g[REG_R15] = r.r15;
  return site->resume;
}

void publish_int3_table(std::vector<std::pair<std::uintptr_t, Site*>> entries) {
  auto* t = new Int3Table;
  t->entries = std::move(entries);
  std::sort(t->entries.begin(), t->entries.end());
  Int3Table* old = g_int3_table.exchange(t, std::memory_order_acq_rel);  // I1: matches I2
  if (old) sync::tasks_trace().call([old] { delete old; });
}

bool int3_table_lists(const std::vector<std::pair<std::uintptr_t, Site*>>& sorted) {
  const Int3Table* t = g_int3_table.load(std::memory_order_acquire);
  return t ? t->entries == sorted : sorted.empty();
}

}  // namespace hp::core
