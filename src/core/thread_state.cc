#include "core/thread_state.h"

#include <pthread.h>

#include <algorithm>
#include <mutex>

#include "base/thread_annotations.h"

namespace hp::core {

constinit thread_local ThreadState tls_state
    __attribute__((tls_model("initial-exec"))){nullptr, false, 0};
std::atomic<std::uint64_t> g_unregistered_misses{0};

namespace {

std::atomic<ThreadRecord*> g_head{nullptr};
Mutex g_records_mu;  // serializes registration and folding; the list itself is lock-free
std::atomic<std::uint64_t> g_exited_hits{0}, g_exited_rec{0}, g_exited_ret{0};

// Releases the record when the thread exits: its counts are folded into the totals and
// the record is reused by a later thread; pending return instances die with the thread.
struct RecordReleaser {
  ~RecordReleaser() {
    ThreadRecord* r = tls_state.rec;
    if (!r) return;
    MutexLock l(g_records_mu);
    g_exited_hits.fetch_add(r->hits.exchange(0, std::memory_order_relaxed),
                            std::memory_order_relaxed);
    g_exited_rec.fetch_add(r->misses_recursion.exchange(0, std::memory_order_relaxed),
                           std::memory_order_relaxed);
    g_exited_ret.fetch_add(r->misses_return_stack.exchange(0, std::memory_order_relaxed),
                           std::memory_order_relaxed);
    for (std::uint32_t i = 0; i < kMaxReturnDepth; i++)
      r->stack[i].site.store(nullptr, std::memory_order_relaxed);
    r->depth.store(0, std::memory_order_release);
    tls_state.rec = nullptr;
    tls_state.schemes_ready = 0;
    r->in_use.store(false, std::memory_order_release);
  }
};
thread_local RecordReleaser tls_releaser;

}  // namespace

// In a fork child only the forking thread exists: the other records are released, so
// their return stacks no longer keep sites as zombies.
void release_records_in_child() HP_NO_THREAD_SAFETY_ANALYSIS {
  g_records_mu.reinit_after_fork();
  for (ThreadRecord* p = g_head.load(std::memory_order_acquire); p; p = p->next) {
    if (p == tls_state.rec) continue;
    for (std::uint32_t i = 0; i < kMaxReturnDepth; i++) {
      p->stack[i].site.store(nullptr, std::memory_order_relaxed);
    }
    p->depth.store(0, std::memory_order_relaxed);
    p->in_use.store(false, std::memory_order_release);
  }
}

[[maybe_unused]] const int g_atfork = [] {
  pthread_atfork(nullptr, nullptr, &release_records_in_child);
  return 0;
}();

HP_DISPATCH_SECTION ThreadRecord& register_thread_record() {
  MutexLock l(g_records_mu);
  ThreadRecord* r = nullptr;
  for (ThreadRecord* p = g_head.load(std::memory_order_acquire); p; p = p->next) {
    if (!p->in_use.load(std::memory_order_acquire)) {
      r = p;
      break;
    }
  }
  if (!r) {
    r = new ThreadRecord;  // never freed: scans may read any record at any time
    r->next = g_head.load(std::memory_order_relaxed);
    g_head.store(r, std::memory_order_release);
  }
  r->in_use.store(true, std::memory_order_release);
  tls_state.rec = r;
  (void)&tls_releaser;  // odr-use: constructs the releaser for this thread
  return *r;
}

ThreadRecord* thread_records_head() noexcept {
  return g_head.load(std::memory_order_acquire);
}

HitTotals hit_totals() noexcept {
  HitTotals t{g_exited_hits.load(std::memory_order_relaxed),
              g_exited_rec.load(std::memory_order_relaxed) +
                  g_unregistered_misses.load(std::memory_order_relaxed),
              g_exited_ret.load(std::memory_order_relaxed)};
  for (ThreadRecord* p = thread_records_head(); p; p = p->next) {
    t.hits += p->hits.load(std::memory_order_relaxed);
    t.misses_recursion += p->misses_recursion.load(std::memory_order_relaxed);
    t.misses_return_stack += p->misses_return_stack.load(std::memory_order_relaxed);
  }
  return t;
}

std::vector<const Site*> sites_referenced_by_return_stacks() {
  std::vector<const Site*> out;
  for (ThreadRecord* p = thread_records_head(); p; p = p->next) {
    (void)p->depth.load(std::memory_order_acquire);  // R2: matches R1
    // Entries at or above depth may be written concurrently, but a push stores the site
    // before publishing depth, so a pending instance is always visible below depth. Look
    // at all entries anyway: a stale pointer only delays reclamation.
    for (std::uint32_t i = 0; i < kMaxReturnDepth; i++) {
      if (const Site* s = p->stack[i].site.load(std::memory_order_acquire)) out.push_back(s);
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace hp::core
