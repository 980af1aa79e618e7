#include "core/text_patch.h"

#include "core/text_patch_heads.h"
#include "core/text_patch_pads.h"
#include "core/text_patch_raw.h"
#include "core/text_patch_short.h"
#include "core/text_patch_threads.h"
#include "core/text_patch_traps.h"

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
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/assert.h"
#include "base/compiler.h"
#include "base/thread_annotations.h"

namespace hp::core {

using namespace patching;  // NOLINT(google-build-using-namespace): the patcher's own parts

namespace {

bool code_equals(std::uintptr_t addr, const PatchBytes& bytes) {
  for (std::size_t i = 0; i < bytes.size(); i++) {
    if (read_code_byte(addr + i) != bytes[i]) return false;
  }
  return true;
}

std::atomic<bool> g_head_before_pad_for_testing{false};

// ---------------------------------------------------------------------------------------
// Totals (relaxed: statistics only).
std::atomic<std::uint64_t> g_sync_core_rounds{0};
std::atomic<std::uint64_t> g_short_pads_left{0};

// ---------------------------------------------------------------------------------------
Mutex g_patch_mutex;  // one transaction at a time; held for a whole apply_patches()

Result<void> init_once() HP_REQUIRES(g_patch_mutex) {
  static bool done = false;
  if (done) return {};
  HP_TRY(install_move_signal());
  if (const char* log = std::getenv("HOTPROBE_PATCH_VERDICT_LOG"); log && *log) {
    g_verdict_fd.store(open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644),
                       std::memory_order_relaxed);
  }
  HP_TRY(install_trap_handler());
  done = true;
  return {};
}

long membarrier(int cmd) {
  return raw_syscall(__NR_membarrier, cmd, 0, 0);
}

// 0 unknown, 1 SYNC_CORE registered, 2 only PRIVATE_EXPEDITED (x86 returns from the IPI
// with iret, which serializes: the kernel documents SYNC_CORE as a no-op on x86 for that
// reason), 3 neither.
std::atomic<int> g_sync_mode{0};

// The patching thread takes no asynchronous signal while sites spin: a handler of the
// program that calls a site of the batch on this thread would spin forever. Synchronous
// signals stay open (they cannot be blocked without dying of them), and so do glibc's
// two internal ones (SIGCANCEL, SIGSETXID: a setuid elsewhere waits for every thread).
class AsyncSignalsBlocked {
 public:
  AsyncSignalsBlocked() {
    std::uint64_t mask = ~std::uint64_t{0};
    for (int sig : {SIGTRAP, SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGSYS, 32, 33})
      mask &= ~(std::uint64_t{1} << (sig - 1));
    raw_syscall(SYS_rt_sigprocmask, SIG_BLOCK, reinterpret_cast<long>(&mask),
                reinterpret_cast<long>(&old_), sizeof mask);
  }
  ~AsyncSignalsBlocked() {
    raw_syscall(SYS_rt_sigprocmask, SIG_SETMASK, reinterpret_cast<long>(&old_), 0, sizeof old_);
  }
  AsyncSignalsBlocked(const AsyncSignalsBlocked&) = delete;
  AsyncSignalsBlocked& operator=(const AsyncSignalsBlocked&) = delete;

 private:
  std::uint64_t old_ = 0;
};

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
    for (std::uintptr_t p = s.pad_at & ~(kPage - 1); s.pad_at && p < s.pad_at + s.pad_new.size();
         p += kPage) {
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
  const std::size_t cap = thread_count_estimate() + 64;
  auto tids = std::make_unique<pid_t[]>(cap);
  unsigned cuts = 0;
  const long listed = list_all_threads(tids.get(), cap, now_ns() + kObserveBudgetNs, cuts);
  if (listed < 0 || static_cast<std::size_t>(listed) > cap) return false;
  std::size_t running = 0;
  for (long i = 0; i < listed; i++) {
    const ThreadState ts = read_thread(tids[static_cast<std::size_t>(i)]);
    if (ts.state == ThreadState::kRunning) {
      tids[running++] = tids[static_cast<std::size_t>(i)];
    } else if (ts.state == ThreadState::kUnreadable ||
               (ts.state != ThreadState::kGone && inside(ts.pc))) {
      return false;
    }
  }
  if (running == 0) return true;
  auto answered = std::make_unique<std::atomic<std::uint8_t>[]>(running);
  MoveTable mt{nullptr, 0, ranges.data(), ranges.size(), tids.get(), answered.get(), running};
  g_sample_inside.store(0, std::memory_order_relaxed);
  const unsigned missing = sample_running(mt, g_move_signal.load(std::memory_order_relaxed));
  return missing == 0 && g_sample_inside.load(std::memory_order_relaxed) == 0;
}

namespace {

Error no_membarrier() {
  return Error(Errc::unsupported,
               "membarrier(PRIVATE_EXPEDITED_SYNC_CORE) is not available: hotprobe cannot "
               "serialize the other threads' instruction streams on this kernel "
               "(needs Linux 4.16 or later with CONFIG_MEMBARRIER)");
}

// Registers this process for membarrier once; false when neither command is available.
bool sync_core_registered() {
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
  return mode != 3;
}

// One serializing round, allocating nothing (it runs inside the window).
bool sync_core_in_window() {
  const int mode = g_sync_mode.load(std::memory_order_acquire);
  long rc = -1;
  if (mode == 1) rc = membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE);
  if (mode == 2) rc = membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
  if (rc != 0) return false;
  g_sync_core_rounds.fetch_add(1, std::memory_order_relaxed);
  return true;
}

}  // namespace

Result<void> sync_core() {
  if (!sync_core_registered() || !sync_core_in_window()) return no_membarrier();
  return {};
}

namespace {
std::atomic<bool> g_fail_next_apply{false};

// Another tracer's breakpoints: bpftrace, perf and SystemTap place kernel uprobes, and a
// debugger its breakpoints, as an int3 (CC) on an instruction's first byte, in the page
// of every process that maps the file. Copied into a trampoline as an "original" byte,
// it would kill the program with SIGTRAP there.
bool int3_at_instruction(const PatchSite& s, const PatchBytes& b) {
  if (b[0] == kInt3) return true;
  for (const auto& [off, to] : s.ip_map) {
    if (off < b.size() && b[off] == kInt3) return true;
  }
  return false;
}

// The bytes the caller expects hold such an int3 (it read them from memory, under the
// other tracer): a displacement of several bytes, or an int3 patched over an int3. A
// one-byte patch from CC to another byte is hotprobe's own int3 site going away.
bool int3_of_another_tracer(const PatchSite& s) {
  if (s.old_bytes.size() == 1) return s.old_bytes[0] == kInt3 && s.new_bytes[0] == kInt3;
  return int3_at_instruction(s, s.old_bytes);
}

// The code in memory holds an int3 where the caller expects another byte.
bool int3_in_memory(const PatchSite& s) {
  if (read_code_byte(s.addr) == kInt3 && s.old_bytes[0] != kInt3) return true;
  for (const auto& [off, to] : s.ip_map) {
    if (off < s.old_bytes.size() && read_code_byte(s.addr + off) == kInt3 &&
        s.old_bytes[off] != kInt3)
      return true;
  }
  return false;
}

Error observe_error(const ObserveFailure& f, int sig) {
  switch (f.kind) {
    case ObserveFailure::kProc:
      return Error(Errc::io_error,
                   "cannot read /proc/self/task: hotprobe needs /proc to find the threads it "
                   "must move out of the code it patches (mount proc); nothing was changed");
    case ObserveFailure::kTooMany:
      return Error(Errc::busy,
                   "threads appeared faster than hotprobe could list them while it patched; "
                   "nothing was changed: retry");
    case ObserveFailure::kChurn:
      return Error(Errc::busy,
                   "threads were created and exited faster than hotprobe could list them all "
                   "for 1 s (a thread it does not know of may be inside the code it patches); "
                   "nothing was changed: retry when the program starts fewer threads");
    default:
      break;
  }
  const std::string t = "thread " + std::to_string(f.tid) + " of this process ";
  const std::string s = std::to_string(sig);
  if (f.unreadable) {
    return Error(Errc::busy, "hotprobe could not read /proc/self/task/" + std::to_string(f.tid) +
                                 "/syscall for 1 s (no file descriptor left?), so it could not "
                                 "see where " +
                                 t + "was; nothing was changed. Retry, or raise RLIMIT_NOFILE");
  }
  const std::string what = f.preempted_inside
                               ? t + "stayed preempted inside code hotprobe was about to change"
                               : t + "kept running with hotprobe's signal " + s +
                                     " blocked, so hotprobe could not see where it was";
  return Error(Errc::busy, what + " for 1 s; nothing was changed. Retry, leave signal " + s +
                               " (hotprobe::reserved_signal()) unblocked in that thread, or set "
                               "HOTPROBE_SIGNAL to a real-time signal it leaves unblocked");
}

}  // namespace

Error code_changed_by_another_tracer(std::uintptr_t addr) {
  char msg[200];
  std::snprintf(msg, sizeof msg,
                "the code at 0x%lx was changed by another tracer (a kernel uprobe or debugger "
                "breakpoint); detach it first (bpftrace, perf probe, gdb), then attach again",
                (unsigned long)addr);
  return Error(Errc::busy, msg);
}

void fail_next_apply_for_testing() noexcept {
  g_fail_next_apply.store(true, std::memory_order_relaxed);
}

void use_trap_heads_for_testing(bool on) noexcept {
  set_trap_heads_for_testing(on);
}

void use_head_before_pad_for_testing(bool on) noexcept {
  g_head_before_pad_for_testing.store(on, std::memory_order_relaxed);
}

namespace {

// A short-jump site's pad: written before its site's head when attaching (nobody jumps
// to it yet), after it when restoring; `old` for a rollback.
void write_short_pad(const PatchSite& s, bool old) {
  const PatchBytes& b = old ? s.pad_old : s.pad_new;
  for (std::size_t i = 0; i < b.size(); i++)
    write_byte(s.pad_at + i, b[i]);
}

}  // namespace

Result<PatchStats> apply_patches(std::span<const PatchSite> sites) {
  MutexLock lock(g_patch_mutex);
  HP_TRY(init_once());
  if (g_fail_next_apply.exchange(false, std::memory_order_relaxed)) {
    return Error(Errc::busy, "failed on purpose (fail_next_apply_for_testing)");
  }
  PatchStats stats;
  if (sites.empty()) return stats;
  const std::size_t n = sites.size();

  // Per site: its head, the bytes as they are and as they will be (a pad site jumps to its
  // pad; a site that jumps to its pad is restored from there), and its pad.
  std::vector<Head> heads(n);
  std::vector<PatchBytes> olds(n), news(n);
  std::vector<Pad*> pads(n, nullptr);
  std::vector<Range> ranges;
  ranges.reserve(n);
  for (std::size_t i = 0; i < n; i++) {
    const PatchSite& s = sites[i];
    if (s.new_bytes.empty() || s.new_bytes.size() != s.old_bytes.size() ||
        s.new_bytes.size() > PatchBytes::kCapacity) {
      return Error(Errc::invalid_argument, "patch site with inconsistent byte counts");
    }
    olds[i] = s.old_bytes;
    news[i] = s.new_bytes;
    if (int3_of_another_tracer(s)) return code_changed_by_another_tracer(s.addr);
    if (!code_equals(s.addr, s.old_bytes)) {
      auto it = g_pads.find(s.addr);
      if (it == g_pads.end() || !it->second.jumped ||
          !std::equal(s.old_bytes.data(), s.old_bytes.data() + s.old_bytes.size(),
                      it->second.caller_view.data(),
                      it->second.caller_view.data() + it->second.caller_view.size()) ||
          !code_equals(s.addr, it->second.actual)) {
        if (int3_in_memory(s)) return code_changed_by_another_tracer(s.addr);
        char msg[240];
        std::snprintf(msg, sizeof msg,
                      "the code at 0x%lx is not what hotprobe expected: another tracer or "
                      "patcher changed it, or the module changed; detach the other tool first",
                      (unsigned long)s.addr);
        return Error(Errc::busy, msg);
      }
      olds[i] = it->second.actual;
      pads[i] = &it->second;
    }
    if (s.pad_at) {
      if (s.pad_old.size() != s.pad_new.size() || s.pad_old.empty() ||
          s.pad_old.size() > PatchBytes::kCapacity) {
        return Error(Errc::invalid_argument, "pad with inconsistent byte counts");
      }
      if (!code_equals(s.pad_at, s.pad_old)) {
        char msg[240];
        std::snprintf(msg, sizeof msg,
                      "the padding at 0x%lx that the short jump at 0x%lx goes through is not "
                      "what hotprobe expected: another tool changed it; detach it first",
                      (unsigned long)s.pad_at, (unsigned long)s.addr);
        return Error(Errc::busy, msg);
      }
    }
    heads[i] = head_for(s);
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
  if (n > kTrapSlots / 4) {
    return Error(Errc::invalid_argument, "batch too large for one transaction (split it)");
  }
  // Pads (this may map a region); a site that gets none traps.
  bool any_pad = false;
  for (std::size_t i = 0; i < n; i++) {
    if (heads[i] != Head::pad) continue;
    pads[i] = pad_for(sites[i].addr);
    if (!pads[i]) {
      heads[i] = Head::trap;
      continue;
    }
    news[i] = jump_to_pad(sites[i], *pads[i]);
    any_pad = true;
  }
  seal_pad_regions();  // pads are code before any thread can reach one
  // Everything the window needs is allocated now.
  bool multi_byte = false;
  bool may_hold_threads = false;  // some site has instruction boundaries inside it
  bool traps = false;
  bool cpu_rule = true;
  bool split_final = false;  // pad sites go final in a round of their own
  std::vector<Range> pad_ranges;
  // Short-jump pads restored after their sites: a thread on one goes on at its site.
  std::vector<PatchSite> short_pads;
  std::vector<std::pair<std::uint32_t, std::uintptr_t>> short_moves;
  std::vector<Range> short_ranges;
  const bool head_first = g_head_before_pad_for_testing.load(std::memory_order_relaxed);
  for (const PatchSite& s : sites) {
    if (s.pad_at && !s.pad_first) short_moves.push_back({1, s.addr});
  }
  for (std::size_t i = 0, k = 0; i < n; i++) {
    const PatchSite& s = sites[i];
    if (!s.pad_at || s.pad_first) continue;
    PatchSite view;  // the pad as a site whose offset 1 is the pad's first byte
    view.addr = s.pad_at - 1;
    view.ip_map = std::span(&short_moves[k++], 1);
    short_pads.push_back(view);
  }
  for (const PatchSite& v : short_pads)
    short_ranges.push_back({v.addr, v.addr + 1 + kShortPadLength, &v});
  std::sort(short_ranges.begin(), short_ranges.end(),
            [](const Range& a, const Range& b) { return a.start < b.start; });
  for (std::size_t i = 0; i < n; i++) {
    multi_byte |= sites[i].new_bytes.size() > 1;
    may_hold_threads |= !sites[i].ip_map.empty();
    traps |= heads[i] == Head::trap || heads[i] == Head::whole;
    if (cpu_rule && interior_may_run_long(sites[i])) cpu_rule = false;
    // A failed pad batch takes every site back from its final bytes: safe only where the
    // new code is a jump (no thread can be inside it).
    split_final |= heads[i] != Head::pad && heads[i] != Head::whole && news[i][0] != 0xE9;
  }
  split_final &= any_pad;
  for (Range& r : ranges) {
    const auto i = static_cast<std::size_t>(r.site - sites.data());
    if (heads[i] != Head::pad) continue;
    pad_ranges.push_back(r);     // step 5: offset 1 is inside
    r.start = r.site->addr + 1;  // step 2: a thread spinning at offset 1 may stay
  }
  std::unique_ptr<Observation> obs;
  if ((multi_byte && may_hold_threads) || any_pad || !short_ranges.empty()) {
    obs = std::make_unique<Observation>(thread_count_estimate() * 2 + 256);
  }
  const int sig = g_move_signal.load(std::memory_order_relaxed);
  if (!sync_core_registered()) return no_membarrier();
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
  // A trapping head, or a one-byte patch that replaces an int3, may be trapped on during
  // the window: the trap table says where such a thread continues.
  if (traps) {
    trap_clear_if_crowded();
    for (std::size_t i = 0; i < n; i++) {
      if (heads[i] == Head::trap || heads[i] == Head::whole)
        trap_insert(sites[i].addr, sites[i].trap_target);
    }
  }
  // A pad spins (its slot holds its own address) until the batch is decided.
  for (std::size_t i = 0; i < n; i++) {
    if (heads[i] == Head::pad) pads[i]->slot->store(pads[i]->at, std::memory_order_release);
  }

  // The window: from the first hold written to the last head written, this thread calls
  // nothing that can be a site (raw system calls, no allocation, no libc) and takes no
  // asynchronous signal.
  ObserveFailure observed;
  bool pads_left = false;  // a restored short site's pad that a thread would not leave
  bool sync_failed = false;
  bool done = false;
  {
    AsyncSignalsBlocked no_signals;
    auto round = [&] {
      if (!sync_core_in_window()) HP_DIE("membarrier failed after it had worked");
      stats.sync_core_rounds++;
    };
    // Short-jump pads before anything can jump to them (serialized with the holds).
    auto write_pads_first = [&](bool old) {
      for (const PatchSite& s : sites) {
        if (s.pad_at && s.pad_first) write_short_pad(s, old);
      }
    };
    if (!head_first) write_pads_first(false);
    // Step 1: hold every multi-byte site.
    if (multi_byte) {
      for (std::size_t i = 0; i < n; i++)
        write_hold(sites[i].addr, heads[i]);
      sync_failed = !sync_core_in_window();
      if (!sync_failed) stats.sync_core_rounds++;
      // Step 2: nobody stays inside a site. Sites without inner instruction boundaries
      // (restoring the original bytes over a 5-byte jmp) cannot hold a thread.
      if (!sync_failed && may_hold_threads) {
        observed = observe_threads(ranges.data(), ranges.size(), *obs, sig, cpu_rule, false, stats);
      }
      if (sync_failed || observed.kind != ObserveFailure::kNone) {
        for (std::size_t i = 0; i < n; i++)
          release_hold(sites[i].addr, heads[i], olds[i].data());
        (void)sync_core_in_window();
        if (!head_first) write_pads_first(true);
      } else {
        // Step 3: the bytes behind the holds.
        for (std::size_t i = 0; i < n; i++) {
          for (std::size_t b = tail_start(heads[i]); b < news[i].size(); b++)
            write_byte(sites[i].addr + b, news[i][b]);
        }
        round();
      }
    }
    if (!sync_failed && observed.kind == ObserveFailure::kNone) {
      // Step 4: the first bytes, each with one store: a held thread runs the new code.
      for (std::size_t i = 0; i < n; i++) {
        if (!split_final || heads[i] == Head::pad)
          write_final(sites[i].addr, heads[i], news[i].data());
      }
      round();
      done = true;
      if (head_first) {
        pause_ns(2000000);  // the window the variant opens, wide enough to be met at once
        write_pads_first(false);
        round();
      }
      if (any_pad) {
        // Step 5: the threads held on a pad site's second instruction (no thread arrives
        // there any more) go to the trampoline's equivalent place.
        observed =
            observe_threads(pad_ranges.data(), pad_ranges.size(), *obs, sig, false, true, stats);
        if (observed.kind != ObserveFailure::kNone) {
          // Back, step by step: first bytes (threads at a pad go back to the function),
          // tails, holds.
          done = false;
          for (std::size_t i = 0; i < n; i++) {
            if (heads[i] == Head::pad)
              pads[i]->slot->store(sites[i].addr, std::memory_order_release);
            if (!split_final || heads[i] == Head::pad)
              unwrite_final(sites[i].addr, heads[i], olds[i].data());
          }
          round();
          for (std::size_t i = 0; i < n; i++) {
            for (std::size_t b = tail_start(heads[i]); b < olds[i].size(); b++)
              write_byte(sites[i].addr + b, olds[i][b]);
          }
          round();
          for (std::size_t i = 0; i < n; i++)
            release_hold(sites[i].addr, heads[i], olds[i].data());
          round();
          write_pads_first(true);
        } else {
          for (std::size_t i = 0; i < n; i++) {
            if (heads[i] == Head::pad) {
              pads[i]->slot->store(jump_target(sites[i].addr, sites[i].new_bytes),
                                   std::memory_order_release);
            }
          }
          if (split_final) {
            for (std::size_t i = 0; i < n; i++) {
              if (heads[i] != Head::pad) write_final(sites[i].addr, heads[i], news[i].data());
            }
            round();
          }
        }
      }
      if (done && !short_ranges.empty()) {
        // Restored short-jump sites: nothing jumps to their pads any more; a thread still
        // on one goes on at its site, then the pad is padding again.
        // A thread starved of CPU on a loaded machine may take its time: a few tries.
        pads_left = true;
        for (int tries = 0; tries < 3 && pads_left; tries++) {
          pads_left = observe_threads(short_ranges.data(), short_ranges.size(), *obs, sig, true,
                                      false, stats)
                          .kind != ObserveFailure::kNone;
        }
        if (!pads_left) {
          for (const PatchSite& s : sites) {
            if (s.pad_at && !s.pad_first) write_short_pad(s, false);
          }
        }
      }
    }
  }
  for (std::size_t i = 0; i < n; i++) {
    if (!pads[i]) continue;
    Pad& pad = *pads[i];
    if (heads[i] == Head::pad) {
      if (done) {
        pad.jumped = true;
        pad.caller_view = sites[i].new_bytes;
        pad.actual = news[i];
      } else {
        pad.slot->store(sites[i].addr, std::memory_order_release);
      }
    } else if (done) {  // restored from its pad jump: a thread still on the pad goes to the
                        // function
      pad.jumped = false;
      pad.slot->store(sites[i].addr, std::memory_order_release);
    }
  }
  if (traps) {
    for (std::size_t i = n; i-- > 0;) {  // last in, first out: see trap_remove
      if (heads[i] == Head::trap || heads[i] == Head::whole) trap_remove(sites[i].addr);
    }
  }
  restore_protection();
  if (pads_left) {
    // The sites are restored; their pads keep jumping to the trampolines and are never
    // used again (nor is the thread that stayed on one for a second moved later).
    for (const PatchSite& s : sites) {
      if (s.pad_at && !s.pad_first) keep_pad_claimed(s.pad_at);
    }
    g_short_pads_left.fetch_add(1, std::memory_order_relaxed);
  }
  if (sync_failed) return no_membarrier();
  if (observed.kind != ObserveFailure::kNone) return observe_error(observed, sig);
  return stats;
}

PatchTotals patch_totals() noexcept {
  return {g_sync_core_rounds.load(std::memory_order_relaxed), traps_redirected(),
          g_threads_moved.load(std::memory_order_relaxed),
          g_short_pads_left.load(std::memory_order_relaxed)};
}

}  // namespace hp::core
