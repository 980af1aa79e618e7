#include "core/dispatch.h"

#include <sys/syscall.h>

#include <atomic>
#include <cstddef>
#include <functional>

#include "arch/x86_64/clobber.h"
#include "base/assert.h"
#include "core/thread_state.h"
#include "sync/schemes.h"
#include "sync/tasks_trace.h"

namespace hp::core {

using hotprobe::Hit;
using hotprobe::Regs;
using hotprobe::Scheme;

namespace {

// One domain per scheme for the whole process: a site belongs to one scheme, and every
// engine of that scheme shares its domain. tasks-trace's is the process's one
// (sync::tasks_trace()).
template <class D>
D& process_domain() {
  static D* d = new D;  // never destroyed: trampolines outlive statics
  return *d;
}

template <Scheme S>
HP_ALWAYS_INLINE auto& domain() {
  if constexpr (S == Scheme::tasks_trace) {
    return sync::tasks_trace();
  } else {
    return process_domain<typename sync::SchemeTraits<S>::Domain>();
  }
}

// The read side of a scheme. tasks-trace's is static (a thread-local word): calling it
// directly spares the call to tasks_trace() that domain<>() makes.
template <Scheme S>
HP_ALWAYS_INLINE sync::ReadToken read_lock() {
  if constexpr (S == Scheme::tasks_trace) {
    return sync::TasksTrace::read_lock();
  } else {
    return domain<S>().read_lock();
  }
}
template <Scheme S>
HP_ALWAYS_INLINE void read_unlock(sync::ReadToken tok) {
  if constexpr (S == Scheme::tasks_trace) {
    sync::TasksTrace::read_unlock(tok);
  } else {
    domain<S>().read_unlock(tok);
  }
}

// xmm0-15, saved around handlers that may write them (dispatch.h). This file is built
// without vector registers, so nothing between the save and the restore but the handlers
// can change them.
struct alignas(16) VectorSave {
  std::uint8_t bytes[256];
};
#define HP_XMM_OP(op, i) op " %%xmm" #i ", " #i "*16(%0)\n\t"
#define HP_XMM_LD(i) "movaps " #i "*16(%0), %%xmm" #i "\n\t"
HP_ALWAYS_INLINE void save_vectors(VectorSave& v) {
  __asm__ volatile(
      HP_XMM_OP("movaps", 0) HP_XMM_OP("movaps", 1) HP_XMM_OP("movaps", 2) HP_XMM_OP("movaps", 3)
          HP_XMM_OP("movaps", 4) HP_XMM_OP("movaps", 5) HP_XMM_OP("movaps", 6)
              HP_XMM_OP("movaps", 7) HP_XMM_OP("movaps", 8) HP_XMM_OP("movaps", 9)
                  HP_XMM_OP("movaps", 10) HP_XMM_OP("movaps", 11) HP_XMM_OP("movaps", 12)
                      HP_XMM_OP("movaps", 13) HP_XMM_OP("movaps", 14) HP_XMM_OP("movaps", 15)
      :
      : "r"(v.bytes)
      : "memory");
}
HP_ALWAYS_INLINE void restore_vectors(const VectorSave& v) {
  __asm__ volatile(HP_XMM_LD(0) HP_XMM_LD(1) HP_XMM_LD(2) HP_XMM_LD(3) HP_XMM_LD(4) HP_XMM_LD(5)
                       HP_XMM_LD(6) HP_XMM_LD(7) HP_XMM_LD(8) HP_XMM_LD(9) HP_XMM_LD(10)
                           HP_XMM_LD(11) HP_XMM_LD(12) HP_XMM_LD(13) HP_XMM_LD(14) HP_XMM_LD(15)
                   :
                   : "r"(v.bytes)
                   : "memory");
}
#undef HP_XMM_OP
#undef HP_XMM_LD

// Whether this array's handlers run between save_vectors() and restore_vectors().
HP_ALWAYS_INLINE bool dispatcher_saves_vectors(const ConsumerArray* arr) {
  return !kTrampolinesSaveVectors && arr->saves_vectors;
}

std::atomic<std::uintptr_t> g_ret_tramp[sync::kSchemeCount];  // [scheme_index()]
static_assert(sync::kSchemeCount <= 8 * sizeof(ThreadState::schemes_ready),
              "ThreadState::schemes_ready has a bit per scheme");
std::atomic<std::uintptr_t> g_one_return_entry{0};
std::atomic<std::uint64_t> g_gps{0};

// Drops instances whose frames are gone: before a push at slot S, every instance with a
// slot below S belongs to a frame that a longjmp unwound, and one at S itself too unless
// S still holds the return trampoline (a tail call from a probed function into another:
// the two instances then share the slot and return together, as the kernel's chained
// return instances do).
HP_ALWAYS_INLINE std::uint32_t drop_dead(ThreadRecord& r, std::uint32_t d, std::uint64_t slot,
                                         bool slot_hijacked) {
  while (d > 0 && (r.stack[d - 1].slot < slot || (r.stack[d - 1].slot == slot && !slot_hijacked))) {
    r.stack[d - 1].site.store(nullptr, std::memory_order_relaxed);
    d--;
  }
  return d;
}

HP_COLD HP_DISPATCH_SECTION void count_recursion_miss(ThreadRecord* rec) noexcept {
  if (rec) {
    rec->misses_recursion.store(rec->misses_recursion.load(std::memory_order_relaxed) + 1,
                                std::memory_order_relaxed);
  } else {
    g_unregistered_misses.fetch_add(1, std::memory_order_relaxed);
  }
}

HP_DISPATCH_SECTION void unhijack(ThreadRecord& rec) noexcept {
  std::uint32_t d = rec.depth.load(std::memory_order_relaxed);
  for (std::uint32_t i = 0; i < d; i++) {
    ReturnInstance& ri = rec.stack[i];
    auto* slot = reinterpret_cast<std::uint64_t*>(ri.slot);
    if (ri.hijacked && *slot == ri.tramp) *slot = ri.orig_ret;
    ri.hijacked = false;
  }
  tls_state.rehijack_pending = d != 0;
}

HP_COLD HP_DISPATCH_SECTION void rehijack(ThreadRecord& rec, std::uint64_t rsp) noexcept {
  std::uint32_t d = rec.depth.load(std::memory_order_relaxed);
  // The deepest instances whose slots are at or below rsp belong to unwound frames.
  while (d > 0 && !rec.stack[d - 1].hijacked && rec.stack[d - 1].slot <= rsp) {
    rec.stack[d - 1].site.store(nullptr, std::memory_order_relaxed);
    d--;
  }
  for (std::uint32_t i = 0; i < d; i++) {
    ReturnInstance& ri = rec.stack[i];
    auto* slot = reinterpret_cast<std::uint64_t*>(ri.slot);
    if (!ri.hijacked && *slot == ri.orig_ret) {
      *slot = ri.tramp;
      ri.hijacked = true;
    }
  }
  rec.depth.store(d, std::memory_order_release);
  tls_state.rehijack_pending = false;
}

// A thread's first hit under a scheme allocates and registers (its record, the domain's
// per-thread state), and malloc, memset and friends use vector registers, which a
// trampoline without vector saves did not save: do it once with the whole FPU/SSE state
// saved by hand.
template <Scheme S>
HP_COLD HP_DISPATCH_SECTION void first_hit() noexcept {
  alignas(64) std::uint8_t fx[512];
  __asm__ volatile("fxsave64 %0" : "=m"(fx));
  (void)thread_record();
  auto& d = domain<S>();
  d.read_unlock(d.read_lock());
  tls_state.schemes_ready |= std::uint8_t(1u << static_cast<int>(S));
  __asm__ volatile("fxrstor64 %0" : : "m"(fx));
}

// Completes instance `ri` (= rec.stack[depth], its consumers recorded), publishes it and
// points the return address at `ret_slot` to the return trampoline.
HP_ALWAYS_INLINE void hijack_return(ThreadRecord& rec, ReturnInstance& ri, std::uint32_t depth,
                                    Site* site, std::uint64_t* ret_slot, std::uint64_t orig_ret,
                                    std::uintptr_t tramp) {
  ri.orig_ret = orig_ret;
  ri.slot = reinterpret_cast<std::uint64_t>(ret_slot);
  ri.tramp = tramp;
  ri.hijacked = true;
  ri.site.store(site, std::memory_order_relaxed);
  rec.depth.store(depth + 1, std::memory_order_release);  // R1: matches R2 (zombie scan)
  *ret_slot = tramp;
}

// What a return probe of `site` writes over the return address: the landing in the site's
// entry trampoline (whose exit pushes it on the return stack buffer, so the function's
// ret is predicted), else the scheme's return trampoline.
template <Scheme S>
HP_ALWAYS_INLINE std::uintptr_t return_target(const Site* site) {
  return site->landing ? site->landing
                       : g_ret_tramp[sync::scheme_index(S)].load(std::memory_order_relaxed);
}

// Everything but the fast loop: filters, return instances, vector saves. Out of line,
// so the common case (entry handlers only) stays a short straight path.
template <Scheme S>
HP_DISPATCH_SECTION __attribute__((noinline)) bool entry_general(Site* site, Regs* regs,
                                                                 const ConsumerArray* arr,
                                                                 ThreadRecord& rec) {
  VectorSave vs;
  const bool save = dispatcher_saves_vectors(arr);
  if (save) save_vectors(vs);
  Hit hit{regs, nullptr, nullptr, site->probe_address};
  ReturnInstance* ri = nullptr;
  std::uint32_t depth = 0;
  const std::uintptr_t tramp = return_target<S>(site);
  auto* ret_slot = reinterpret_cast<std::uint64_t*>(regs->rsp);
  const bool use_stack = arr->any_return && site->at_entry;
  bool tail_call = false;  // the slot already returns through the instance below
  if (use_stack) {
    std::uint32_t d0 = rec.depth.load(std::memory_order_relaxed);
    tail_call = d0 > 0 && rec.stack[d0 - 1].slot == regs->rsp && rec.stack[d0 - 1].hijacked &&
                *ret_slot == rec.stack[d0 - 1].tramp;
    depth = drop_dead(rec, d0, regs->rsp, tail_call);
    if (depth < site->return_depth) {
      ri = &rec.stack[depth];
      ri->n = 0;
    }
  }
  std::uint64_t hits = 0, return_misses = 0;
  for (std::uint32_t i = 0; i < arr->n; i++) {
    const ConsumerEntry& c = arr->e[i];
    hit.cookie = c.cookie;
    hit.data = nullptr;
    if (c.filter && !c.filter(hit)) continue;
    if (c.on_return) {
      if (ri && ri->n < kMaxReturnConsumers) {
        ri->cd[ri->n] = {c.id, 0};
        hit.data = &ri->cd[ri->n].data;
        ri->n++;
      } else if (use_stack) {
        return_misses++;  // no room on the stack, or too many return consumers
      }
    }
    if (c.on_entry) {
      c.on_entry(hit);
      hits++;
    }
  }
  const bool hijacked = ri && ri->n;
  if (hijacked) {
    // A tail call keeps the real return address in the instance below (same slot).
    hijack_return(rec, *ri, depth, site, ret_slot,
                  tail_call ? rec.stack[depth - 1].orig_ret : *ret_slot, tramp);
  } else if (use_stack) {
    rec.depth.store(depth, std::memory_order_release);
  }
  rec.hits.store(rec.hits.load(std::memory_order_relaxed) + hits, std::memory_order_relaxed);
  if (HP_UNLIKELY(return_misses)) {
    rec.misses_return_stack.store(
        rec.misses_return_stack.load(std::memory_order_relaxed) + return_misses,
        std::memory_order_relaxed);
  }
  if (save) restore_vectors(vs);
  return hijacked && site->landing;
}

// The common return probe: one consumer, no filter, no vector saves, a call nested in
// the frames already on the return stack (no longjmp leftovers to drop, no tail call,
// room left). Anything else returns false for entry_general().
template <Scheme S>
HP_ALWAYS_INLINE bool entry_one_return(Site* site, Regs* regs, const ConsumerEntry& c,
                                       ThreadRecord& rec) {
  const std::uint64_t rsp = regs->rsp;
  const std::uint32_t d = rec.depth.load(std::memory_order_relaxed);
  if (HP_UNLIKELY(d >= site->return_depth || (d > 0 && rec.stack[d - 1].slot <= rsp))) {
    return false;
  }
  auto* ret_slot = reinterpret_cast<std::uint64_t*>(rsp);
  ReturnInstance& ri = rec.stack[d];
  ri.n = 1;
  ri.cd[0] = {c.id, 0};
  std::uint64_t hits = 0;
  if (c.on_entry) {
    Hit hit{regs, c.cookie, &ri.cd[0].data, site->probe_address};
    c.on_entry(hit);
    hits = 1;
  }
  hijack_return(rec, ri, d, site, ret_slot, *ret_slot, return_target<S>(site));
  rec.hits.store(rec.hits.load(std::memory_order_relaxed) + hits, std::memory_order_relaxed);
  return true;
}

// With the section held and the guard set. True when the return address now points at the
// site's landing (the trampoline then leaves through its landing exit).
template <Scheme S>
HP_ALWAYS_INLINE bool run_entry_consumers(Site* site, Regs* regs, const ConsumerArray* arr,
                                          ThreadRecord& rec) {
  if (HP_LIKELY(arr->simple)) {
    const std::uint32_t n = arr->n;
    Hit hit{regs, nullptr, nullptr, site->probe_address};
    for (std::uint32_t i = 0; i < n; i++) {
      hit.cookie = arr->e[i].cookie;
      hit.data = nullptr;
      arr->e[i].on_entry(hit);
    }
    rec.hits.store(rec.hits.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
    return false;
  }
  if (arr->one_return && site->at_entry && entry_one_return<S>(site, regs, arr->e[0], rec)) {
    return site->landing != 0;
  }
  return entry_general<S>(site, regs, arr, rec);
}

template <Scheme S>
HP_DISPATCH_SECTION bool entry_dispatch(void* ctx, Regs* regs) {
  // Not on the handler stack, and it is there to take: a caller that is not a trampoline
  // (the SIGTRAP hook of int3 mode, on the signal's stack) moves there too.
  if (HP_UNLIKELY(arch::handler_stack_available())) {
    return hp_handler_stack_call(ctx, regs, reinterpret_cast<std::uint64_t>(&entry_dispatch<S>)) &
           1;
  }
  auto* site = static_cast<Site*>(ctx);
  ThreadState& ts = tls_state;
  // The guard comes first: registering the thread's record allocates, and malloc may be
  // probed (a hit during the registration is a miss, like any hit inside a handler).
  if (HP_UNLIKELY(ts.in_handler)) {
    count_recursion_miss(ts.rec);
    return false;
  }
  ts.in_handler = true;
  if (HP_UNLIKELY(!(ts.schemes_ready & (1u << static_cast<int>(S))))) first_hit<S>();
  ThreadRecord& rec = thread_record();
  if (HP_UNLIKELY(ts.rehijack_pending)) rehijack(rec, regs->rsp);
  sync::ReadToken tok = read_lock<S>();
  const ConsumerArray* arr = site->consumers.load(std::memory_order_acquire);  // P2: matches P1
  const bool landed = arr && run_entry_consumers<S>(site, regs, arr, rec);
  read_unlock<S>(tok);
  ts.in_handler = false;
  return landed;
}

// The trampoline's fast path (FastEntry) calls this with the section held and the
// recursion guard set, for an array that is not its one-handler case.
HP_DISPATCH_SECTION bool entry_locked_tasks_trace(void* ctx, Regs* regs, const void* arr,
                                                  void* rec) {
  return run_entry_consumers<Scheme::tasks_trace>(static_cast<Site*>(ctx), regs,
                                                  static_cast<const ConsumerArray*>(arr),
                                                  *static_cast<ThreadRecord*>(rec));
}

// Every return handler of `arr` that `ri` recorded at entry, with the vector registers
// saved where needed. Returns the number run.
HP_DISPATCH_SECTION __attribute__((noinline)) std::uint64_t return_handlers_general(
    const ConsumerArray* arr, ReturnInstance& ri, Regs* regs, std::uint64_t probe_address) {
  VectorSave vs;
  const bool save = dispatcher_saves_vectors(arr);
  if (save) save_vectors(vs);
  std::uint64_t hits = 0;
  Hit hit{regs, nullptr, nullptr, probe_address};
  for (std::uint32_t i = 0; i < arr->n; i++) {
    const ConsumerEntry& c = arr->e[i];
    if (!c.on_return) continue;
    for (std::uint32_t k = 0; k < ri.n; k++) {
      if (ri.cd[k].consumer_id == c.id) {
        hit.cookie = c.cookie;
        hit.data = &ri.cd[k].data;
        c.on_return(hit);
        hits++;
        break;
      }
    }
  }
  if (save) restore_vectors(vs);
  return hits;
}

template <Scheme S>
HP_ALWAYS_INLINE void run_return_handlers(ThreadRecord& rec, ReturnInstance& ri, Regs* regs) {
  Site* site = ri.site.load(std::memory_order_relaxed);
  ThreadState& ts = tls_state;
  if (!site) return;
  if (ts.in_handler) {
    rec.misses_recursion.store(rec.misses_recursion.load(std::memory_order_relaxed) + 1,
                               std::memory_order_relaxed);
    return;
  }
  ts.in_handler = true;
  sync::ReadToken tok = read_lock<S>();
  const ConsumerArray* arr = site->consumers.load(std::memory_order_acquire);  // P2: matches P1
  std::uint64_t hits = 0;
  if (arr) {
    const ConsumerEntry& c0 = arr->e[0];
    if (HP_LIKELY(arr->one_return && ri.n == 1 && ri.cd[0].consumer_id == c0.id)) {
      Hit hit{regs, c0.cookie, &ri.cd[0].data, site->probe_address};
      c0.on_return(hit);
      hits = 1;
    } else {
      hits = return_handlers_general(arr, ri, regs, site->probe_address);
    }
  }
  read_unlock<S>(tok);
  ts.in_handler = false;
  rec.hits.store(rec.hits.load(std::memory_order_relaxed) + hits, std::memory_order_relaxed);
}

template <Scheme S>
HP_DISPATCH_SECTION std::uint64_t return_dispatch(void*, Regs* regs) {
  ThreadRecord& rec = thread_record();
  const std::uint64_t slot = regs->rsp - 8;  // the ret popped the hijacked address from here
  std::uint32_t depth = rec.depth.load(std::memory_order_relaxed);
  // Instances above ours were skipped by a longjmp (their slots are below ours).
  while (depth > 0 && rec.stack[depth - 1].slot < slot) {
    rec.stack[depth - 1].site.store(nullptr, std::memory_order_relaxed);
    depth--;
  }
  HP_CHECK_MSG(depth > 0 && rec.stack[depth - 1].slot == slot,
               "a hijacked return has no return instance: the return stack is corrupt");
  std::uint64_t orig = rec.stack[depth - 1].orig_ret;
  // This instance and the ones a tail call chained to it (same slot) return now.
  while (depth > 0 && rec.stack[depth - 1].slot == slot) {
    ReturnInstance& ri = rec.stack[depth - 1];
    run_return_handlers<S>(rec, ri, regs);
    // Only now may the zombie scan stop seeing the site.
    ri.site.store(nullptr, std::memory_order_release);
    depth--;
  }
  rec.depth.store(depth, std::memory_order_release);
  if (HP_UNLIKELY(tls_state.rehijack_pending)) rehijack(rec, regs->rsp);
  return orig;
}

template <class F>
decltype(auto) with_domain(Scheme s, F&& f) {
  return sync::with_scheme(
      s, [&](auto c) -> decltype(auto) { return f(domain<decltype(c)::value>()); });
}

}  // namespace

void unhijack_all() noexcept {
  unhijack(thread_record());
}
void rehijack_live(std::uint64_t rsp) noexcept {
  rehijack(thread_record(), rsp);
}

EntryDispatcher entry_dispatcher(Scheme s) noexcept {
  return sync::with_scheme(
      s, [](auto c) -> EntryDispatcher { return &entry_dispatch<decltype(c)::value>; });
}

ReturnDispatcher return_dispatcher(Scheme s) noexcept {
  return sync::with_scheme(
      s, [](auto c) -> ReturnDispatcher { return &return_dispatch<decltype(c)::value>; });
}

void set_return_trampoline(Scheme s, std::uintptr_t address) noexcept {
  g_ret_tramp[sync::scheme_index(s)].store(address, std::memory_order_release);
}
std::uintptr_t return_trampoline(Scheme s) noexcept {
  return g_ret_tramp[sync::scheme_index(s)].load(std::memory_order_acquire);
}

namespace {
// Site is not standard-layout (strings, vectors): offsets from an object.
std::int32_t site_offset(const Site& site, const void* member) noexcept {
  return static_cast<std::int32_t>(static_cast<const char*>(member) -
                                   reinterpret_cast<const char*>(&site));
}

ReturnStackLayout return_stack_layout() noexcept {
  static_assert(sizeof(ReturnInstance::hijacked) == 1 && sizeof(ReturnInstance::n) == 4 &&
                sizeof(ThreadRecord::depth) == 4);
  ReturnStackLayout l;
  l.rec_depth = offsetof(ThreadRecord, depth);
  l.rec_stack = offsetof(ThreadRecord, stack);
  l.rec_hits = offsetof(ThreadRecord, hits);
  l.ri_size = sizeof(ReturnInstance);
  l.ri_orig = offsetof(ReturnInstance, orig_ret);
  l.ri_slot = offsetof(ReturnInstance, slot);
  l.ri_tramp = offsetof(ReturnInstance, tramp);
  l.ri_site = offsetof(ReturnInstance, site);
  l.ri_hijacked = offsetof(ReturnInstance, hijacked);
  l.ri_n = offsetof(ReturnInstance, n);
  l.ri_consumer_id = offsetof(ReturnInstance, cd) + offsetof(ReturnConsumerData, consumer_id);
  l.ri_data = offsetof(ReturnInstance, cd) + offsetof(ReturnConsumerData, data);
  return l;
}

// %fs-relative offset of a thread-local of this thread (initial-exec TLS: the same offset
// in every thread; %fs:0 holds the thread pointer itself on x86-64).
std::int32_t fs_offset(const void* p) noexcept {
  std::uintptr_t tp;
  __asm__("mov %%fs:0, %0" : "=r"(tp));
  return static_cast<std::int32_t>(reinterpret_cast<std::intptr_t>(p) -
                                   static_cast<std::intptr_t>(tp));
}
}  // namespace

bool fast_entry_for(const Site& site, FastEntry& f) noexcept {
  // The template builds a hotprobe::Hit by hand.
  static_assert(offsetof(Hit, regs) == 0 && offsetof(Hit, cookie) == 8 &&
                offsetof(Hit, data) == 16 && offsetof(Hit, probe_address) == 24 &&
                sizeof(Hit) == 32);
  static_assert(sizeof(ThreadState::in_handler) == 1 && sizeof(ThreadState::schemes_ready) == 1);
  static_assert(offsetof(ThreadState, rehijack_pending) == offsetof(ThreadState, in_handler) + 1 &&
                sizeof(ThreadState::rehijack_pending) == 1 &&
                sizeof(ConsumerArray::one_entry) == 1);
  static_assert(sync::tt_detail::kNestMask == 0xffff'ffffULL, "the template tests %eax");
  // Under TSan every trampoline saves the vector registers, and the trampoline would not
  // fit its slot with both; the instrumented C++ dispatcher is the better check there.
  if (site.scheme != Scheme::tasks_trace || kTrampolinesSaveVectors) return false;
  f.ts_rec = fs_offset(&tls_state.rec);
  f.ts_in_handler = fs_offset(&tls_state.in_handler);
  f.ts_ready = fs_offset(&tls_state.schemes_ready);
  f.ready_bit = static_cast<std::uint8_t>(1u << static_cast<int>(Scheme::tasks_trace));
  f.rec_hits = offsetof(ThreadRecord, hits);
  f.tt_word = fs_offset(&sync::tt_detail::tls_word);
  f.tt_enter = sync::tt_detail::kEntryInc;
  f.consumers = reinterpret_cast<std::uint64_t>(&site.consumers);
  f.arr_one_entry = offsetof(ConsumerArray, one_entry);
  f.arr_cookie = offsetof(ConsumerArray, e) + offsetof(ConsumerEntry, cookie);
  f.arr_handler = offsetof(ConsumerArray, e) + offsetof(ConsumerEntry, on_entry);
  f.gp_futex = reinterpret_cast<std::uint64_t>(&sync::tt_detail::gp_futex);
  f.sys_futex = SYS_futex;
  const std::uintptr_t one_return = g_one_return_entry.load(std::memory_order_acquire);
  f.locked_dispatcher =
      one_return ? one_return : reinterpret_cast<std::uint64_t>(&entry_locked_tasks_trace);
  return true;
}

bool one_return_entry_for(OneReturnEntry& f) noexcept {
  if (kTrampolinesSaveVectors) return false;  // no fast entry paths to call it
  static_assert(sizeof(ConsumerArray::one_return) == 1 && sizeof(Site::return_depth) == 4);
  f.arr_one_return = offsetof(ConsumerArray, one_return);
  f.arr_id = offsetof(ConsumerArray, e) + offsetof(ConsumerEntry, id);
  f.arr_handler = offsetof(ConsumerArray, e) + offsetof(ConsumerEntry, on_entry);
  f.arr_cookie = offsetof(ConsumerArray, e) + offsetof(ConsumerEntry, cookie);
  const Site layout;
  f.site_landing = site_offset(layout, &layout.landing);
  f.site_return_depth = site_offset(layout, &layout.return_depth);
  f.site_probe_address = site_offset(layout, &layout.probe_address);
  f.rs = return_stack_layout();
  f.fallback = reinterpret_cast<std::uint64_t>(&entry_locked_tasks_trace);
  return true;
}

void set_one_return_entry(std::uintptr_t address) noexcept {
  g_one_return_entry.store(address, std::memory_order_release);
}

bool fast_return_for(Scheme s, FastReturn& f) noexcept {
  if (s != Scheme::tasks_trace || kTrampolinesSaveVectors) return false;
  static_assert(sizeof(ReturnInstance::n) == 4 && sizeof(ThreadRecord::depth) == 4);
  static_assert(sizeof(ConsumerArray::one_return) == 1);
  f.ts_in_handler = fs_offset(&tls_state.in_handler);
  f.ts_rec = fs_offset(&tls_state.rec);
  f.rs = return_stack_layout();
  f.tt_word = fs_offset(&sync::tt_detail::tls_word);
  f.tt_enter = sync::tt_detail::kEntryInc;
  const Site layout;
  f.site_consumers = site_offset(layout, &layout.consumers);
  f.site_probe_address = site_offset(layout, &layout.probe_address);
  f.arr_one_return = offsetof(ConsumerArray, one_return);
  f.arr_id = offsetof(ConsumerArray, e) + offsetof(ConsumerEntry, id);
  f.arr_cookie = offsetof(ConsumerArray, e) + offsetof(ConsumerEntry, cookie);
  f.arr_handler = offsetof(ConsumerArray, e) + offsetof(ConsumerEntry, on_return);
  f.gp_futex = reinterpret_cast<std::uint64_t>(&sync::tt_detail::gp_futex);
  f.sys_futex = SYS_futex;
  return true;
}

bool handlers_need_vector_saves(const hotprobe::ProbeSpec& spec) {
  if (!spec.vector_registers) return false;
  for (std::uint64_t f : {reinterpret_cast<std::uint64_t>(spec.on_entry),
                          reinterpret_cast<std::uint64_t>(spec.on_return),
                          reinterpret_cast<std::uint64_t>(spec.filter)}) {
    if (arch::may_write_vector_registers(f)) return true;
  }
  return false;
}

ConsumerArray* ConsumerArray::make(const std::vector<Consumer*>& cs) {
  if (cs.empty()) return nullptr;
  std::size_t bytes = sizeof(ConsumerArray) + sizeof(ConsumerEntry) * (cs.size() - 1);
  auto* a = static_cast<ConsumerArray*>(BatchArena::allocate(bytes));
  new (a) ConsumerArray;
  a->n = static_cast<std::uint32_t>(cs.size());
  bool simple = true;
  for (std::size_t i = 0; i < cs.size(); i++) {
    const Consumer& c = *cs[i];
    a->e[i] = {c.on_entry, c.cookie, c.filter, c.on_return, c.id};
    a->any_return |= c.on_return != nullptr;
    a->saves_vectors |= c.saves_vectors;
    simple &= c.on_entry && !c.filter && !c.on_return && !c.saves_vectors;
  }
  a->simple = simple;
  a->one_entry = simple && cs.size() == 1;
  a->one_return = cs.size() == 1 && cs[0]->on_return && !cs[0]->filter && !cs[0]->saves_vectors;
  return a;
}

void ConsumerArray::destroy(ConsumerArray* a) {
  if (!a) return;
  a->~ConsumerArray();
  BatchArena::deallocate(a);
}

void synchronize(Scheme s) {
  with_domain(s, [](auto& d) { d.synchronize(); });
  g_gps.fetch_add(1, std::memory_order_relaxed);
}

std::uint64_t grace_periods_waited() noexcept {
  return g_gps.load(std::memory_order_relaxed);
}

void call_after_grace_period(Scheme s, void (*fn)(void*), void* arg) {
  struct Node : sync::Callback {
    void (*f)(void*);
    void* a;
  };
  auto* n = new Node;
  n->f = fn;
  n->a = arg;
  n->fn = [](sync::Callback* cb) {
    auto* self = static_cast<Node*>(cb);
    self->f(self->a);
    delete self;
  };
  with_domain(s, [n](auto& d) { d.call(static_cast<sync::Callback*>(n)); });
}

}  // namespace hp::core
