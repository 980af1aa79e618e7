#include "sync/percpu.h"
#include "base/signals.h"

#include <linux/membarrier.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <vector>

#include "base/assert.h"
#include "base/thread_annotations.h"

namespace hp::sync {

// ---------------------------------------------------------------------------------------
// membarrier

namespace {

long sys_membarrier(int cmd) {
  return ::syscall(__NR_membarrier, cmd, 0u, 0);
}

std::atomic<bool> g_membarrier_registered{false};

void register_membarrier() {
  // Registering twice is harmless (the tasks-trace domain registers too).
  HP_CHECK_MSG(sys_membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0,
               "membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) failed: the fast "
               "read sides need Linux >= 4.14 with membarrier allowed (seccomp)");
  g_membarrier_registered.store(true, std::memory_order_release);
}

}  // namespace

void membarrier_all() {
  if (!g_membarrier_registered.load(std::memory_order_acquire)) register_membarrier();
  long r = sys_membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
  if (r != 0 && errno == EPERM) {
    // The kernel says this process is not registered although the flag says it is: seen
    // once, in a fork child of a process under load (the flag is the parent's). Register
    // this process, and try again.
    register_membarrier();
    r = sys_membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED);
  }
  HP_CHECK_MSG(r == 0, "membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) failed after registering");
}

// ---------------------------------------------------------------------------------------
// CPUs

namespace {

unsigned read_possible_cpus() noexcept {
  // Format: "0-3,5,8-11". The highest id + 1 is what per-CPU arrays need.
  if (std::FILE* f = std::fopen("/sys/devices/system/cpu/possible", "re")) {
    char buf[256];
    size_t n = std::fread(buf, 1, sizeof buf - 1, f);
    std::fclose(f);
    buf[n] = 0;
    long highest = -1;
    // Every number is a CPU id or a range bound; '-' and ',' are separators.
    for (char* p = buf; *p;) {
      if (*p < '0' || *p > '9') {
        ++p;
        continue;
      }
      char* end;
      long v = std::strtol(p, &end, 10);
      if (v > highest) highest = v;
      p = end;
    }
    if (highest >= 0) return static_cast<unsigned>(highest + 1);
  }
  int n = get_nprocs_conf();
  return n > 0 ? static_cast<unsigned>(n) : 1;
}

}  // namespace

unsigned possible_cpus() noexcept {
  static const unsigned n = read_possible_cpus();
  return n;
}

bool rseq_available() noexcept {
  return __rseq_size != 0 && static_cast<std::int32_t>(detail::rseq_area()->cpu_id) >= 0;
}

namespace detail {

unsigned current_cpu_slow() noexcept {
  int cpu = sched_getcpu();
  if (cpu < 0) return 0;
  return static_cast<unsigned>(cpu) % possible_cpus();
}

void percpu_add_slow(PerCpuCounter& counters, std::int64_t delta) noexcept {
  // Release: a reader's decrement must not pass its section (the sum is acquire).
  counters[current_cpu()].fetch_add(delta, std::memory_order_acq_rel);
}

}  // namespace detail

std::int64_t percpu_sum(const PerCpuCounter& counters) noexcept {
  std::int64_t s = 0;
  for (unsigned c = 0; c < counters.size(); ++c)
    s += counters[c].load(std::memory_order_acquire);
  return s;
}

// ---------------------------------------------------------------------------------------
// Per-thread slot tables

namespace detail {

__thread SlotTable tls_slot_table __attribute__((tls_model("initial-exec"))) = {0, 0, nullptr};

namespace {

// One per thread that has used a slot, in the thread's static TLS. Its slots live in a
// region reserved once (address space for kMaxSlotIds slots; the kernel provides zeroed
// pages as ids are used), so they never move while the thread lives: a read section's
// token keeps its slot's address, and read_unlock() needs no lookup and no check.
// Registration is an mmap, a system call, so a signal handler can register a thread.
struct ThreadRecord {
  ThreadRecord* next = nullptr;
  ThreadRecord* prev = nullptr;
  std::uint32_t cap = 0;        // ids below cap have a slot
  ThreadSlot* slots = nullptr;  // the reserved region, or null

  ThreadSlot* at(std::uint32_t id) const { return id < cap ? &slots[id] : nullptr; }
  bool on_heap() const { return slots != nullptr; }
};
__thread ThreadRecord tls_record __attribute__((tls_model("initial-exec")));

// Aligned to its own size, so that a slot's address tells its region (and its id): see
// slot_is_mine() and slot_id() in percpu.h.
ThreadSlot* alloc_slots() {
  void* p = ::mmap(nullptr, 2 * kRegionBytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  HP_CHECK_MSG(p != MAP_FAILED, "cannot reserve a thread's read-side slots (mmap failed)");
  const auto start = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t aligned = (start + kRegionBytes - 1) & ~(kRegionBytes - 1);
  if (aligned > start) ::munmap(p, aligned - start);
  const std::uintptr_t end = aligned + kRegionBytes;
  if (start + 2 * kRegionBytes > end)
    ::munmap(reinterpret_cast<void*>(end), start + 2 * kRegionBytes - end);
  return reinterpret_cast<ThreadSlot*>(aligned);
}

void free_slots(ThreadSlot* s) {
  if (s) ::munmap(s, kRegionBytes);
}

void zero_slot(ThreadSlot& s) {
  for (int i = 0; i < 2; ++i) {
    s.lock[i].store(0, std::memory_order_relaxed);
    s.unlock[i].store(0, std::memory_order_relaxed);
  }
}

void on_thread_exit(void* rec);

// Lock order: the registry mutex is a leaf (nothing is acquired while holding it).
struct Registry {
  hp::Mutex mu;
  ThreadRecord* threads HP_GUARDED_BY(mu) = nullptr;
  std::vector<RetiredCounts*> owners HP_GUARDED_BY(mu);  // by id; nullptr: free
  std::vector<std::uint32_t> free_ids HP_GUARDED_BY(mu);
  pthread_key_t key{};

  void link(ThreadRecord* r) HP_REQUIRES(mu) {
    r->next = threads;
    if (threads) threads->prev = r;
    threads = r;
  }
  void unlink(ThreadRecord* r) HP_REQUIRES(mu) {
    if (r->prev) r->prev->next = r->next;
    if (r->next) r->next->prev = r->prev;
    if (threads == r) threads = r->next;
    r->next = r->prev = nullptr;
  }
};

Registry& registry();

// Holds the registry mutex with every signal blocked, so that a signal handler that reads
// (and so may register or sum) never interrupts this thread while it holds the mutex.
class HP_SCOPED_CAPABILITY RegistryLock {
 public:
  explicit RegistryLock(Registry& r) HP_ACQUIRE(r.mu) : r_(r) {
    sigset_t all;
    hp::fill_async_signals(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old_);
    r_.mu.lock();
  }
  ~RegistryLock() HP_RELEASE() {
    r_.mu.unlock();
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  RegistryLock(const RegistryLock&) = delete;
  RegistryLock& operator=(const RegistryLock&) = delete;

 private:
  Registry& r_;
  sigset_t old_;
};

void atfork_prepare() HP_NO_THREAD_SAFETY_ANALYSIS {
  registry().mu.lock();
}
void atfork_parent() HP_NO_THREAD_SAFETY_ANALYSIS {
  registry().mu.unlock();
}
void atfork_child() HP_NO_THREAD_SAFETY_ANALYSIS {
  Registry& r = registry();
  // Only the forking thread exists here: drop the other threads' tables. A balanced
  // table contributes as much to lock sums as to unlock sums, so dropping it changes
  // nothing; an unbalanced one was a section that can never end in this process.
  auto* self = static_cast<ThreadRecord*>(pthread_getspecific(r.key));
  for (ThreadRecord* t = r.threads; t;) {
    ThreadRecord* next = t->next;
    if (t != self) {
      r.unlink(t);
      if (t->on_heap()) free_slots(t->slots);
    }
    t = next;
  }
  // Then the domains: their grace-period locks may be held by threads that are gone.
  for (RetiredCounts* o : r.owners) {
    if (o && o->fork_child) o->fork_child(o->fork_ctx);
  }
  r.mu.unlock();
}

Registry& registry() {
  // Leaked on purpose: threads may exit after static destructors have run.
  static Registry* r = [] {
    auto* reg = new Registry;
    HP_CHECK(pthread_key_create(&reg->key, &on_thread_exit) == 0);
    HP_CHECK(pthread_atfork(&atfork_prepare, &atfork_parent, &atfork_child) == 0);
    return reg;
  }();
  return *r;
}

void on_thread_exit(void* p) {
  auto* rec = static_cast<ThreadRecord*>(p);
  Registry& r = registry();
  {
    RegistryLock l(r);
    // Fold this thread's counts into each live domain so that sums stay exact.
    std::uint32_t n =
        std::min<std::uint32_t>(rec->cap, static_cast<std::uint32_t>(r.owners.size()));
    for (std::uint32_t id = 0; id < n; ++id) {
      RetiredCounts* o = r.owners[id];
      if (!o) continue;
      ThreadSlot* s = rec->at(id);
      for (int i = 0; i < 2; ++i) {
        o->lock[i] += s->lock[i].load(std::memory_order_relaxed);
        o->unlock[i] += s->unlock[i].load(std::memory_order_relaxed);
      }
    }
    r.unlink(rec);
    if (rec->on_heap()) free_slots(rec->slots);
    // Folded: a later destructor that reads again registers anew, from zero.
    rec->slots = nullptr;
    rec->cap = 0;
    tls_slot_table = SlotTable{0, tls_slot_table.gen + 1, nullptr};
  }
}

}  // namespace

ThreadSlot* thread_slot_slow(std::uint32_t id) noexcept {
  Registry& r = registry();
  RegistryLock l(r);
  HP_CHECK_MSG(id < r.owners.size() && r.owners[id] != nullptr,
               "read side of a domain that does not exist (destroyed?)");
  ThreadRecord* rec = &tls_record;
  if (rec->slots == nullptr) {
    rec->slots = alloc_slots();
    rec->cap = kMaxSlotIds;
    r.link(rec);
    HP_CHECK(pthread_setspecific(r.key, rec) == 0);
  }
  HP_CHECK_MSG(id < rec->cap, "more than 16384 read-side domains exist at once");
  tls_slot_table = SlotTable{rec->cap, tls_slot_table.gen + 1, rec->slots};
  return rec->at(id);
}

SlotId::SlotId() {
  Registry& r = registry();
  RegistryLock l(r);
  if (!r.free_ids.empty()) {
    // The smallest free id: long-lived domains keep small ids, which have inline slots
    // (allocation-free registration, see percpu.h).
    auto it = std::min_element(r.free_ids.begin(), r.free_ids.end());
    id_ = *it;
    *it = r.free_ids.back();
    r.free_ids.pop_back();
    r.owners[id_] = &retired_;
  } else {
    id_ = static_cast<std::uint32_t>(r.owners.size());
    r.owners.push_back(&retired_);
  }
}

void SlotId::set_fork_child_hook(void (*fn)(void* ctx), void* ctx) {
  Registry& r = registry();
  RegistryLock l(r);
  retired_.fork_child = fn;
  retired_.fork_ctx = ctx;
}

SlotId::~SlotId() {
  Registry& r = registry();
  RegistryLock l(r);
  // The next domain with this id must not see our counts: zero every live thread's slot.
  for (ThreadRecord* t = r.threads; t; t = t->next) {
    if (ThreadSlot* s = t->at(id_)) zero_slot(*s);
  }
  r.owners[id_] = nullptr;
  r.free_ids.push_back(id_);
}

std::uint64_t SlotId::sum_counts(unsigned idx, bool locks) const noexcept {
  Registry& r = registry();
  RegistryLock l(r);
  std::uint64_t s = (locks ? retired_.lock : retired_.unlock)[idx];
  for (ThreadRecord* t = r.threads; t; t = t->next) {
    if (const ThreadSlot* ts = t->at(id_))
      s += (locks ? ts->lock : ts->unlock)[idx].load(std::memory_order_acquire);
  }
  return s;
}

void Backoff::wait() noexcept {
  // Spin a little (a reader is usually about to leave), then yield, then sleep with
  // exponential growth up to 1 ms, as srcu_retry_check_delay does.
  ++round_;
  if (round_ <= 4) return;
  if (round_ <= 8) {
    sched_yield();
    return;
  }
  unsigned shift = std::min(round_ - 8, 7u);
  long ns = std::min(8000L << shift, 1000000L);
  timespec ts{0, ns};
  nanosleep(&ts, nullptr);
}

}  // namespace detail
}  // namespace hp::sync
