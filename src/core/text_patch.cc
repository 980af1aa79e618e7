#include "core/text_patch.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/membarrier.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "base/assert.h"
#include "base/compiler.h"
#include "base/thread_annotations.h"

namespace hp::core {

namespace {

constexpr std::uint8_t kInt3 = 0xCC;
constexpr std::uintptr_t kPage = 4096;

// Code bytes are written and read with plain instructions in asm: sanitizers have no
// shadow for another module's text (ThreadSanitizer faults on it), and no thread of
// this process reads code as data, so there is nothing for them to check.
void write_byte(std::uintptr_t addr, std::uint8_t b) {
  // A single byte store is atomic: a thread fetching the instruction sees the old or the
  // new byte.
  __asm__ volatile("movb %1, %0"
                   : "=m"(*reinterpret_cast<std::uint8_t*>(addr))
                   : "q"(b)
                   : "memory");
}

std::uint8_t read_code_byte(std::uintptr_t addr) {
  std::uint8_t b;
  __asm__ volatile("movb %1, %0" : "=q"(b) : "m"(*reinterpret_cast<const std::uint8_t*>(addr)));
  return b;
}

bool code_equals(std::uintptr_t addr, const PatchBytes& bytes) {
  for (std::size_t i = 0; i < bytes.size(); i++) {
    if (read_code_byte(addr + i) != bytes[i]) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------
// Totals (relaxed: statistics only).
std::atomic<std::uint64_t> g_sync_core_rounds{0};
std::atomic<std::uint64_t> g_traps_redirected{0};
std::atomic<std::uint64_t> g_threads_moved{0};
std::atomic<Int3Hook> g_int3_hook{nullptr};

// ---------------------------------------------------------------------------------------
// In-flight trap table: int3 address -> where to continue. Open addressing over a fixed
// mapping that is never freed, so the SIGTRAP handler can read it at any time without a
// grace period. One writer (under g_patch_mutex). A reader that misses (the entry was
// just removed, or a clear raced it) falls back to re-executing the trap address, which
// by then holds the final byte or traps again and finds the entry.
struct TrapEntry {
  std::atomic<std::uintptr_t> addr;    // 0 empty, kTomb removed
  std::atomic<std::uintptr_t> target;  // written before addr (T1: matches T2)
};
constexpr std::size_t kTrapSlots = std::size_t{1} << 18;
constexpr std::uintptr_t kTomb = 1;
TrapEntry* g_traps = nullptr;
std::size_t g_trap_used = 0;  // live + tombstones, writer only

// Linear within each 1 MiB of address space (a slot per 4 bytes), at a place picked by a
// hash of the MiB: a batch of sites in one library touches a few pages of the table, not
// all 1,024 of them (first touches cost a page fault each), and sites closer than 4 bytes
// (int3 sites only) share a slot and probe the next.
std::size_t trap_hash(std::uintptr_t a) {
  const std::uint64_t region = ((a >> 20) * 0x9E3779B97F4A7C15ull) >> (64 - 18);
  return ((a >> 2) + region) & (kTrapSlots - 1);
}

std::uintptr_t trap_lookup(std::uintptr_t addr) {
  TrapEntry* t = g_traps;
  if (!t) return 0;
  for (std::size_t i = trap_hash(addr), n = 0; n < kTrapSlots;
       i = (i + 1) & (kTrapSlots - 1), n++) {
    std::uintptr_t a = t[i].addr.load(std::memory_order_acquire);  // T2: matches T1
    if (a == 0) return 0;
    if (a == addr) return t[i].target.load(std::memory_order_relaxed);
  }
  return 0;
}

void trap_insert(std::uintptr_t addr, std::uintptr_t target) {
  for (std::size_t i = trap_hash(addr);; i = (i + 1) & (kTrapSlots - 1)) {
    std::uintptr_t a = g_traps[i].addr.load(std::memory_order_relaxed);
    if (a == 0 || a == kTomb || a == addr) {
      g_traps[i].target.store(target, std::memory_order_relaxed);
      g_traps[i].addr.store(addr, std::memory_order_release);  // T1: matches T2
      if (a == 0) g_trap_used++;
      return;
    }
  }
}

// A removed entry at the end of its chain (the next slot empty) becomes empty, and so do
// the tombstones before it: no entry lies behind an empty slot that its own chain needs
// (its chain runs from its hash slot to it without a gap), so readers stay correct, and a
// batch removed last-in first-out (apply_patches) leaves no run of tombstones for later
// lookups to walk through.
void trap_remove(std::uintptr_t addr) {
  constexpr std::size_t kMask = kTrapSlots - 1;
  for (std::size_t i = trap_hash(addr), n = 0; n < kTrapSlots; i = (i + 1) & kMask, n++) {
    std::uintptr_t a = g_traps[i].addr.load(std::memory_order_relaxed);
    if (a == 0) return;
    if (a != addr) continue;
    if (g_traps[(i + 1) & kMask].addr.load(std::memory_order_relaxed) != 0) {
      g_traps[i].addr.store(kTomb, std::memory_order_release);
      return;
    }
    for (std::size_t j = i;; j = (j - 1) & kMask) {
      g_traps[j].addr.store(0, std::memory_order_release);
      g_trap_used--;
      if (g_traps[(j - 1) & kMask].addr.load(std::memory_order_relaxed) != kTomb) return;
    }
  }
}

void trap_clear_if_crowded() {
  if (g_trap_used < kTrapSlots / 2) return;
  for (std::size_t i = 0; i < kTrapSlots; i++)
    g_traps[i].addr.store(0, std::memory_order_release);
  g_trap_used = 0;
}

// ---------------------------------------------------------------------------------------
// Thread moves: the sites of the transaction in flight, for the move-signal handler.
struct Range {
  std::uintptr_t start, end;
  const PatchSite* site;
};
struct MoveTable {
  const Range* ranges;  // sites being patched: move threads inside them
  std::size_t n;
  // Or, when sampling (ranges == nullptr): count threads whose ip is in [start, end).
  const std::pair<std::uintptr_t, std::uintptr_t>* sample;
  std::size_t n_sample;
};
std::atomic<unsigned> g_sample_inside{0};
std::atomic<const MoveTable*> g_moves{nullptr};
std::atomic<int> g_move_handlers_active{0};
std::atomic<unsigned> g_move_acks{0};
int g_move_signal = 0;

}  // namespace

int move_signal_number() noexcept {
  static const int sig = [] {
    const char* s = std::getenv("HOTPROBE_SIGNAL");
    return s ? std::atoi(s) : SIGRTMAX - 3;
  }();
  return sig;
}

namespace {

// The interrupted thread's rip in a signal context (greg_t is a signed 64-bit integer).
struct CtxRip {
  greg_t& g;
  operator std::uintptr_t() const { return static_cast<std::uintptr_t>(g); }  // NOLINT
  CtxRip& operator=(std::uintptr_t v) {
    g = static_cast<greg_t>(v);
    return *this;
  }
};
CtxRip ctx_rip(void* uc) {
  return {static_cast<ucontext_t*>(uc)->uc_mcontext.gregs[REG_RIP]};
}

// Moves the interrupted ip out of the middle of a site being patched. Async-signal-safe.
void move_handler(int, siginfo_t*, void* uc) {
  int saved_errno = errno;
  g_move_handlers_active.fetch_add(1, std::memory_order_acq_rel);  // M1: matches M2
  if (const MoveTable* mt = g_moves.load(std::memory_order_acquire)) {
    CtxRip rip = ctx_rip(uc);
    for (std::size_t i = 0; i < mt->n_sample; i++) {
      if (rip >= mt->sample[i].first && rip < mt->sample[i].second) {
        g_sample_inside.fetch_add(1, std::memory_order_relaxed);
        break;
      }
    }
    for (std::size_t i = 0; i < mt->n; i++) {
      const Range& r = mt->ranges[i];
      if (rip > r.start && rip < r.end) {
        auto off = static_cast<std::uint32_t>(rip - r.start);
        for (const auto& [o, to] : r.site->ip_map) {
          if (o == off) {
            rip = to;
            g_threads_moved.fetch_add(1, std::memory_order_relaxed);
            break;
          }
        }
        break;
      }
    }
  }
  g_move_acks.fetch_add(1, std::memory_order_release);
  g_move_handlers_active.fetch_sub(1, std::memory_order_release);
  errno = saved_errno;
}

struct sigaction g_prev_trap_action;

HP_DISPATCH_SECTION void trap_handler(int sig, siginfo_t* info, void* uc) {
  if (info->si_code == SI_KERNEL) {  // an int3 (not kill(2), not a debugger's step)
    CtxRip rip = ctx_rip(uc);
    std::uintptr_t trap = rip - 1;
    if (Int3Hook hook = g_int3_hook.load(std::memory_order_acquire)) {
      if (std::uintptr_t to = hook(trap, uc)) {
        rip = to;
        return;
      }
    }
    if (std::uintptr_t to = trap_lookup(trap)) {
      rip = to;
      g_traps_redirected.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    // The int3 was ours but the transaction has finished: run what is there now.
    if (read_code_byte(trap) != kInt3) {
      rip = trap;
      return;
    }
  }
  // Not ours: behave as if we were not here.
  if (g_prev_trap_action.sa_flags & SA_SIGINFO) {
    if (g_prev_trap_action.sa_sigaction) return g_prev_trap_action.sa_sigaction(sig, info, uc);
  } else if (g_prev_trap_action.sa_handler != SIG_DFL && g_prev_trap_action.sa_handler != SIG_IGN) {
    return g_prev_trap_action.sa_handler(sig);
  }
  // Default action: uninstall ourselves and re-execute the int3, so the process dies of
  // SIGTRAP as it would have without hotprobe.
  if (info->si_code == SI_KERNEL) ctx_rip(uc) = ctx_rip(uc) - 1;
  signal(SIGTRAP, SIG_DFL);
}

// ---------------------------------------------------------------------------------------
Mutex g_patch_mutex;  // one transaction at a time; held for a whole apply_patches()

Result<void> init_once() HP_REQUIRES(g_patch_mutex) {
  static bool done = false;
  if (done) return {};
  void* mem = mmap(nullptr, kTrapSlots * sizeof(TrapEntry), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) return sys_error("mmap of the trap table");
  g_traps = static_cast<TrapEntry*>(mem);

  struct sigaction sa {};
  sa.sa_sigaction = trap_handler;
  sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGTRAP, &sa, &g_prev_trap_action) != 0) return sys_error("sigaction(SIGTRAP)");

  g_move_signal = move_signal_number();
  struct sigaction ma {};
  ma.sa_sigaction = move_handler;
  ma.sa_flags = SA_SIGINFO | SA_RESTART;
  sigfillset(&ma.sa_mask);
  if (sigaction(g_move_signal, &ma, nullptr) != 0) return sys_error("sigaction(move signal)");
  done = true;
  return {};
}

long membarrier(int cmd) {
  return syscall(__NR_membarrier, cmd, 0, 0);
}

// 0 unknown, 1 SYNC_CORE registered, 2 only PRIVATE_EXPEDITED (x86 returns from the IPI
// with iret, which serializes: the kernel documents SYNC_CORE as a no-op on x86 for that
// reason), 3 neither.
std::atomic<int> g_sync_mode{0};

struct ThreadState {
  pid_t tid;
  enum { kBlocked, kPreempted, kRunning, kGone } state;
  std::uintptr_t pc;
};

bool read_thread(pid_t tid, ThreadState& out) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/self/task/%d/syscall", tid);
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  out.tid = tid;
  if (fd < 0) {
    out.state = ThreadState::kGone;
    return true;
  }
  char buf[256];
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) {
    out.state = ThreadState::kGone;
    return true;
  }
  buf[n] = 0;
  if (std::strncmp(buf, "running", 7) == 0) {
    out.state = ThreadState::kRunning;
    return true;
  }
  long nr = std::strtol(buf, nullptr, 10);
  // The last field is the user pc.
  const char* last = std::strrchr(buf, ' ');
  out.pc = last ? std::strtoull(last + 1, nullptr, 16) : 0;
  out.state = nr == -1 ? ThreadState::kPreempted : ThreadState::kBlocked;
  return true;
}

std::vector<pid_t> list_threads() {
  std::vector<pid_t> tids;
  DIR* d = opendir("/proc/self/task");
  if (!d) return tids;
  pid_t self = static_cast<pid_t>(syscall(SYS_gettid));
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    pid_t t = static_cast<pid_t>(std::atoi(e->d_name));
    if (t != self) tids.push_back(t);
  }
  closedir(d);
  return tids;
}

bool inside_any(const std::vector<Range>& ranges, std::uintptr_t pc) {
  auto it = std::upper_bound(ranges.begin(), ranges.end(), pc,
                             [](std::uintptr_t v, const Range& r) { return v < r.start; });
  if (it == ranges.begin()) return false;
  --it;
  return pc > it->start && pc < it->end;
}

unsigned signal_and_wait(const MoveTable& mt, const std::vector<pid_t>& tids, PatchStats* stats);

// Step 2: no thread may stay strictly inside a site whose tail bytes are about to change.
Result<void> move_threads_out(const std::vector<Range>& ranges, PatchStats& stats) {
  MoveTable mt{ranges.data(), ranges.size(), nullptr, 0};
  std::vector<pid_t> to_signal;
  for (pid_t tid : list_threads()) {
    ThreadState ts{};
    read_thread(tid, ts);
    if (ts.state == ThreadState::kRunning ||
        (ts.state == ThreadState::kPreempted && inside_any(ranges, ts.pc))) {
      to_signal.push_back(tid);
    }
  }
  if (to_signal.empty()) return {};
  if (signal_and_wait(mt, to_signal, &stats) == 0) return {};
  // A thread that blocks the signal is checked again through /proc and accepted if it
  // is now provably outside every site.
  for (pid_t tid : to_signal) {
    ThreadState ts{};
    read_thread(tid, ts);
    if (ts.state == ThreadState::kRunning ||
        (ts.state == ThreadState::kPreempted && inside_any(ranges, ts.pc))) {
      return Error(Errc::busy, "thread " + std::to_string(tid) +
                                   " of this process did not answer hotprobe's signal " +
                                   std::to_string(g_move_signal) +
                                   " within 1 s (is it blocked with sigprocmask?); set "
                                   "HOTPROBE_SIGNAL to a signal the program leaves unblocked");
    }
  }
  return {};
}

// The protections of the pages the sites touch, as runs of adjacent pages.
struct PageRun {
  std::uintptr_t start, end;
  int prot;
};

Result<std::vector<PageRun>> page_runs(std::span<const PatchSite> sites) {
  std::vector<std::uintptr_t> pages;
  for (const PatchSite& s : sites) {
    for (std::uintptr_t p = s.addr & ~(kPage - 1); p < s.addr + s.new_bytes.size(); p += kPage) {
      pages.push_back(p);
    }
  }
  if (!std::is_sorted(pages.begin(), pages.end())) std::sort(pages.begin(), pages.end());
  pages.erase(std::unique(pages.begin(), pages.end()), pages.end());

  // Protections from /proc/self/maps.
  FILE* f = std::fopen("/proc/self/maps", "re");
  if (!f) return sys_error("open /proc/self/maps");
  struct Map {
    std::uintptr_t lo, hi;
    int prot;
  };
  std::vector<Map> maps;
  char line[4096];
  while (std::fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    char perms[5];
    if (std::sscanf(line, "%lx-%lx %4s", &lo, &hi, perms) != 3) continue;
    int prot = (perms[0] == 'r' ? PROT_READ : 0) | (perms[1] == 'w' ? PROT_WRITE : 0) |
               (perms[2] == 'x' ? PROT_EXEC : 0);
    maps.push_back({lo, hi, prot});
  }
  std::fclose(f);

  // One run per mapping, from its first to its last patched page: mprotect splits a
  // mapping at every boundary it is given (and a write permission leaves VM_ACCOUNT
  // behind, so the pieces never merge again), so a batch over a whole library must not
  // leave one piece per patched page in /proc/self/maps.
  std::vector<PageRun> runs;
  std::size_t m = 0;
  std::size_t run_map = SIZE_MAX;
  for (std::uintptr_t p : pages) {
    while (m < maps.size() && maps[m].hi <= p)
      m++;
    if (m == maps.size() || maps[m].lo > p) {
      char msg[128];
      std::snprintf(msg, sizeof msg, "address 0x%lx is not mapped in this process",
                    (unsigned long)p);
      return Error(Errc::invalid_argument, msg);
    }
    if (!runs.empty() && (runs.back().end == p || run_map == m) &&
        runs.back().prot == maps[m].prot) {
      runs.back().end = p + kPage;
    } else {
      runs.push_back({p, p + kPage, maps[m].prot});
    }
    run_map = m;
  }
  return runs;
}

// Sends the move signal to `tids` with `mt` published and waits (bounded) for the
// answers. Returns the number of threads that did not answer.
unsigned signal_and_wait(const MoveTable& mt, const std::vector<pid_t>& tids, PatchStats* stats) {
  g_move_acks.store(0, std::memory_order_relaxed);
  g_moves.store(&mt, std::memory_order_release);
  unsigned sent = 0;
  pid_t pid = getpid();
  for (pid_t tid : tids) {
    if (syscall(SYS_tgkill, pid, tid, g_move_signal) == 0) sent++;
  }
  if (stats) stats->threads_signalled += sent;
  timespec start{};
  clock_gettime(CLOCK_MONOTONIC, &start);
  while (g_move_acks.load(std::memory_order_acquire) < sent) {
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    double waited = double(now.tv_sec - start.tv_sec) + double(now.tv_nsec - start.tv_nsec) * 1e-9;
    if (waited > 1.0) break;
    timespec ts{0, 20000};
    nanosleep(&ts, nullptr);
  }
  unsigned missing = sent - std::min(sent, g_move_acks.load(std::memory_order_acquire));
  g_moves.store(nullptr, std::memory_order_release);
  // M2: matches M1. A handler that loaded the table before it was cleared is finished
  // before `mt` goes away.
  while (g_move_handlers_active.load(std::memory_order_acquire) != 0)
    sched_yield();
  return missing;
}

}  // namespace

Result<bool> threads_outside(std::span<const std::pair<std::uintptr_t, std::uintptr_t>> ranges) {
  MutexLock lock(g_patch_mutex);
  HP_TRY(init_once());
  auto inside = [&](std::uintptr_t pc) {
    for (const auto& [lo, hi] : ranges) {
      if (pc >= lo && pc < hi) return true;
    }
    return false;
  };
  std::vector<pid_t> running;
  for (pid_t tid : list_threads()) {
    ThreadState ts{};
    read_thread(tid, ts);
    if (ts.state == ThreadState::kRunning) {
      running.push_back(tid);
    } else if (ts.state != ThreadState::kGone && inside(ts.pc)) {
      return false;
    }
  }
  if (running.empty()) return true;
  MoveTable mt{nullptr, 0, ranges.data(), ranges.size()};
  g_sample_inside.store(0, std::memory_order_relaxed);
  unsigned missing = signal_and_wait(mt, running, nullptr);
  return missing == 0 && g_sample_inside.load(std::memory_order_relaxed) == 0;
}

Result<void> sync_core() {
  int mode = g_sync_mode.load(std::memory_order_acquire);
  if (mode == 0) {
    if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE) == 0) {
      mode = 1;
    } else if (membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0) {
      mode = 2;
    } else {
      mode = 3;
    }
    g_sync_mode.store(mode, std::memory_order_release);
  }
  long rc = -1;
  if (mode == 1) rc = membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE);
  if (mode == 2) rc = membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
  if (rc != 0) {
    return Error(Errc::unsupported,
                 "membarrier(PRIVATE_EXPEDITED_SYNC_CORE) is not available: hotprobe cannot "
                 "serialize the other threads' instruction streams on this kernel "
                 "(needs Linux 4.16 or later with CONFIG_MEMBARRIER)");
  }
  g_sync_core_rounds.fetch_add(1, std::memory_order_relaxed);
  return {};
}

namespace {
std::atomic<bool> g_fail_next_apply{false};
}  // namespace

void fail_next_apply_for_testing() noexcept {
  g_fail_next_apply.store(true, std::memory_order_relaxed);
}

Result<PatchStats> apply_patches(std::span<const PatchSite> sites) {
  MutexLock lock(g_patch_mutex);
  HP_TRY(init_once());
  if (g_fail_next_apply.exchange(false, std::memory_order_relaxed)) {
    return Error(Errc::busy, "failed on purpose (fail_next_apply_for_testing)");
  }
  PatchStats stats;
  if (sites.empty()) return stats;

  std::vector<Range> ranges;
  ranges.reserve(sites.size());
  for (const PatchSite& s : sites) {
    if (s.new_bytes.empty() || s.new_bytes.size() != s.old_bytes.size() ||
        s.new_bytes.size() > PatchBytes::kCapacity) {
      return Error(Errc::invalid_argument, "patch site with inconsistent byte counts");
    }
    if (!code_equals(s.addr, s.old_bytes)) {
      char msg[160];
      std::snprintf(msg, sizeof msg,
                    "the code at 0x%lx is not what hotprobe expected (patched by someone else, "
                    "or the module changed)",
                    (unsigned long)s.addr);
      return Error(Errc::busy, msg);
    }
    ranges.push_back({s.addr, s.addr + s.new_bytes.size(), &s});
  }
  // A batch's sites mostly come in address order already (a library's functions, in turn).
  auto by_start = [](const Range& a, const Range& b) { return a.start < b.start; };
  if (!std::is_sorted(ranges.begin(), ranges.end(), by_start))
    std::sort(ranges.begin(), ranges.end(), by_start);
  for (std::size_t i = 1; i < ranges.size(); i++) {
    if (ranges[i].start < ranges[i - 1].end) {
      return Error(Errc::invalid_argument, "two patch sites of one batch overlap");
    }
  }
  if (sites.size() > kTrapSlots / 4) {
    return Error(Errc::invalid_argument, "batch too large for one transaction (split it)");
  }
  auto runs = page_runs(sites);
  if (!runs.ok()) return runs.error();

  for (const PageRun& r : *runs) {
    if (mprotect(reinterpret_cast<void*>(r.start), r.end - r.start,
                 r.prot | PROT_READ | PROT_WRITE) != 0) {
      Error e = sys_error("mprotect to write code");
      for (const PageRun& u : *runs) {
        if (&u == &r) break;
        mprotect(reinterpret_cast<void*>(u.start), u.end - u.start, u.prot);
      }
      return e;
    }
    stats.protect_calls++;
  }
  auto restore_protection = [&] {
    for (const PageRun& r : *runs) {
      mprotect(reinterpret_cast<void*>(r.start), r.end - r.start, r.prot);
      stats.protect_calls++;
    }
  };

  trap_clear_if_crowded();
  bool multi_byte = false;
  bool may_hold_threads = false;  // some site has instruction boundaries inside it
  for (const PatchSite& s : sites) {
    trap_insert(s.addr, s.trap_target);
    multi_byte |= s.new_bytes.size() > 1;
    may_hold_threads |= !s.ip_map.empty();
  }
  // Step 1: int3 on every first byte.
  for (const PatchSite& s : sites)
    write_byte(s.addr, kInt3);
  auto fail = [&](Error e) -> Result<PatchStats> {
    for (const PatchSite& s : sites)
      write_byte(s.addr, s.old_bytes[0]);
    (void)sync_core();
    for (const PatchSite& s : sites)
      trap_remove(s.addr);
    restore_protection();
    return e;
  };
  if (auto r = sync_core(); !r.ok()) return fail(r.error());
  stats.sync_core_rounds++;

  if (multi_byte) {
    // Step 2: nobody stays inside a site. Sites without inner instruction boundaries
    // (restoring the original bytes over a 5-byte jmp) cannot hold a thread: no signal.
    if (may_hold_threads) {
      if (auto r = move_threads_out(ranges, stats); !r.ok()) return fail(r.error());
    }
    // Step 3: the tails.
    for (const PatchSite& s : sites) {
      for (std::size_t i = 1; i < s.new_bytes.size(); i++)
        write_byte(s.addr + i, s.new_bytes[i]);
    }
    if (auto r = sync_core(); !r.ok()) return fail(r.error());
    stats.sync_core_rounds++;
  }
  // Step 4: the first bytes.
  bool first_changes = false;
  for (const PatchSite& s : sites) {
    if (s.new_bytes[0] != kInt3) {
      write_byte(s.addr, s.new_bytes[0]);
      first_changes = true;
    }
  }
  if (first_changes) {
    if (auto r = sync_core(); !r.ok()) HP_DIE("membarrier failed after it had worked");
    stats.sync_core_rounds++;
  }
  for (auto s = sites.rbegin(); s != sites.rend(); ++s)  // last in, first out: see trap_remove
    trap_remove(s->addr);
  restore_protection();
  return stats;
}

PatchTotals patch_totals() noexcept {
  return {g_sync_core_rounds.load(std::memory_order_relaxed),
          g_traps_redirected.load(std::memory_order_relaxed),
          g_threads_moved.load(std::memory_order_relaxed)};
}

void set_int3_hook(Int3Hook hook) noexcept {
  g_int3_hook.store(hook, std::memory_order_release);
}

}  // namespace hp::core
