#include "script/run_stack.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "script/eval.h"
#include "script/unwind_table.h"

namespace hotprobe::script {
namespace {

// The calling thread's stack mapping, and the last mapping that was not its own stack
// (a coroutine's): rsp there takes the slow path without looking the maps up again.
struct StackCache {
  std::uint64_t lo = 0, hi = 0;
  std::uint64_t other_lo = 0, other_hi = 0;
};
constinit thread_local StackCache t_stack __attribute__((tls_model("initial-exec")));

std::uint64_t hex_field(const char*& p, const char* end) {
  std::uint64_t v = 0;
  for (; p < end; ++p) {
    const char c = *p;
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) break;
    v = v << 4 | static_cast<std::uint64_t>(d);
  }
  return v;
}

// The mapping of /proc/self/maps holding an address.
struct MappingInfo {
  std::uint64_t lo = 0, hi = 0, offset = 0;
  bool main_stack = false;  // named "[stack]"
  char path[256] = {};      // "" when anonymous or longer than this
};

// Finds the mapping holding `addr`. Reads with a buffer on the stack and no allocation
// (this runs inside a hit).
bool find_mapping(std::uint64_t addr, MappingInfo& m) {
  const int fd = ::open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[1024];
  std::size_t have = 0;
  bool found = false, skipping = false;
  for (;;) {
    const ssize_t n = ::read(fd, buf + have, sizeof buf - have);
    if (n <= 0) break;
    have += static_cast<std::size_t>(n);
    std::size_t start = 0;
    for (;;) {
      const char* nl = static_cast<const char*>(std::memchr(buf + start, '\n', have - start));
      if (!nl) break;
      const char* p = buf + start;
      const char* end = nl;
      start = static_cast<std::size_t>(nl - buf) + 1;
      if (skipping) {  // the tail of a line longer than the buffer
        skipping = false;
        continue;
      }
      // START-END PERMS OFFSET DEV INODE PATH
      const std::uint64_t a = hex_field(p, end);
      if (p < end && *p == '-') ++p;
      const std::uint64_t b = hex_field(p, end);
      if (addr < a || addr >= b) continue;
      m.lo = a;
      m.hi = b;
      m.main_stack = end - p >= 7 && std::memcmp(end - 7, "[stack]", 7) == 0;
      while (p < end && *p == ' ')
        ++p;
      while (p < end && *p != ' ')
        ++p;  // perms
      while (p < end && *p == ' ')
        ++p;
      m.offset = hex_field(p, end);
      for (int field = 0; field < 2; ++field) {  // dev, inode
        while (p < end && *p == ' ')
          ++p;
        while (p < end && *p != ' ')
          ++p;
      }
      while (p < end && *p == ' ')
        ++p;
      const std::size_t len = static_cast<std::size_t>(end - p);
      if (len > 0 && *p == '/' && len < sizeof m.path) std::memcpy(m.path, p, len);
      found = true;
      break;
    }
    if (found) break;
    if (start == 0 && have == sizeof buf) {  // one line fills the buffer: drop it
      skipping = true;
      have = 0;
      continue;
    }
    std::memmove(buf, buf + start, have - start);
    have -= start;
  }
  ::close(fd);
  return found;
}

std::uint64_t thread_pointer() {
  std::uint64_t tp;
  asm("mov %%fs:0, %0" : "=r"(tp));
  return tp;
}

// Whether [rsp, hi) of the calling thread is its own stack mapping (plain loads are safe
// there: it stays mapped while the thread runs on it); hi is its end.
bool own_stack(std::uint64_t rsp, std::uint64_t& hi) {
  StackCache& c = t_stack;
  if (rsp >= c.lo && rsp < c.hi) [[likely]] {
    hi = c.hi;
    return true;
  }
  if (rsp >= c.other_lo && rsp < c.other_hi) return false;
  MappingInfo m;
  if (!find_mapping(rsp, m)) return false;
  const std::uint64_t lo = m.lo, end = m.hi;
  const bool main_stack = m.main_stack;
  // The main thread's "[stack]", or a thread stack that holds the thread's own control
  // block (glibc and musl put it at the top of the stack they map).
  const std::uint64_t tp = thread_pointer();
  if (main_stack || (tp >= lo && tp < end)) {
    // A grown main stack keeps its top: the old entry is replaced, never widened above.
    c.lo = lo;
    c.hi = end;
    hi = end;
    return true;
  }
  c.other_lo = lo;
  c.other_hi = end;
  return false;
}

// Plain loads from the probed thread's stack: not the handler's memory, so the
// sanitizers' view of it (redzones of the program's frames) does not apply.
__attribute__((no_sanitize("address", "thread"))) void load_frame(std::uint64_t fp,
                                                                  std::uint64_t* w) {
  const auto* p = reinterpret_cast<const volatile std::uint64_t*>(fp);
  w[0] = p[0];
  w[1] = p[1];
}
__attribute__((no_sanitize("address", "thread"))) void load_frame1(std::uint64_t sp,
                                                                   std::uint64_t* w) {
  w[0] = *reinterpret_cast<const volatile std::uint64_t*>(sp);
}

// Whether the instruction at `addr`, as the module's file holds it (memory holds the
// probe's patch), is `push %rbp` or `endbr64`: the kernel's test for a uprobe at a
// function's entry, where it records the return address at [rsp] too.
bool entry_instruction_uncached(std::uint64_t addr) {
  MappingInfo m;
  if (!find_mapping(addr, m) || !m.path[0]) return false;
  const int fd = ::open(m.path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  unsigned char insn[4] = {};
  const ssize_t n = ::pread(fd, insn, sizeof insn, static_cast<off_t>(m.offset + (addr - m.lo)));
  ::close(fd);
  if (n < 1) return false;
  if (insn[0] == 0x55) return true;
  static constexpr unsigned char kEndbr64[4] = {0xf3, 0x0f, 0x1e, 0xfa};
  return n == 4 && std::memcmp(insn, kEndbr64, 4) == 0;
}

// Probe address -> 1 + whether it is a function entry, filled on first use (a probe
// address is fixed; a slot once written never changes). Full: computed each time.
constexpr std::size_t kEntrySlots = 1024;
struct EntrySlot {
  std::atomic<std::uint64_t> addr{0};
  std::atomic<std::uint8_t> kind{0};  // 0 being filled, 1 not an entry, 2 an entry
};
EntrySlot g_entry[kEntrySlots];

}  // namespace

bool entry_instruction(std::uint64_t addr) {
  const std::size_t start = (addr * 0x9e3779b97f4a7c15ull) >> 54;
  for (std::size_t i = 0; i < 16; ++i) {
    EntrySlot& s = g_entry[(start + i) % kEntrySlots];
    std::uint64_t seen = s.addr.load(std::memory_order_acquire);
    if (seen == addr) {
      const std::uint8_t k = s.kind.load(std::memory_order_acquire);
      if (k) return k == 2;
      break;  // another thread is filling it
    }
    if (seen == 0 && s.addr.compare_exchange_strong(seen, addr, std::memory_order_acq_rel)) {
      const bool entry = entry_instruction_uncached(addr);
      s.kind.store(entry ? 2 : 1, std::memory_order_release);
      return entry;
    }
    if (seen == addr) {  // lost the race to the same address
      const std::uint8_t k = s.kind.load(std::memory_order_acquire);
      if (k) return k == 2;
      break;
    }
  }
  return entry_instruction_uncached(addr);
}

namespace {

// Reads of the probed thread's stack during a walk: plain loads within its own stack
// mapping at or above the probed rsp, process_vm_readv on any other stack.
struct StackReader {
  bool fast;
  std::uint64_t lo, hi;
  bool read(std::uint64_t addr, std::uint64_t* w, std::size_t words) const {
    if (!fast) return read_user(addr, w, words * sizeof *w);
    if (addr < lo || hi - lo < words * sizeof *w || addr > hi - words * sizeof *w) return false;
    if (words == 2) {
      load_frame(addr, w);
    } else {
      load_frame1(addr, w);
    }
    return true;
  }
};

// The registers of the frame being unwound.
struct WalkState {
  std::uint64_t pc, sp, fp;
};
enum class Step : std::uint8_t { next, end, no_rule };

// One frame by the CFI table: the caller's pc, rsp (the CFA) and rbp. `exact`: the pc is
// where the thread is (the probed pc), not a return address (looked up at pc - 1, the
// call, which may be the last instruction of its function).
Step cfi_step(const StackReader& s, WalkState& w, bool exact) {
  unwind::Rule r;
  if (unwind::find(exact ? w.pc : w.pc - 1, r) != unwind::Found::rule) return Step::no_rule;
  if (r.kind == unwind::Kind::outermost) return Step::end;
  if (r.kind == unwind::Kind::unknown) return Step::no_rule;
  const std::uint64_t cfa = (r.kind == unwind::Kind::rsp ? w.sp : w.fp) +
                            static_cast<std::uint64_t>(static_cast<std::int64_t>(r.cfa_off));
  if (cfa < w.sp + 8 || cfa < 8) return Step::end;  // the caller's frame is above this one
  std::uint64_t ra = 0, fp = w.fp;
  if (!s.read(cfa - 8, &ra, 1) || ra == 0) return Step::end;
  if (r.rbp_off &&
      !s.read(cfa + static_cast<std::uint64_t>(static_cast<std::int64_t>(r.rbp_off)), &fp, 1))
    return Step::end;
  w = {ra, cfa, fp};
  return Step::next;
}

// One frame by the frame pointer: [rbp] the caller's rbp, [rbp + 8] the return address.
Step fp_step(const StackReader& s, WalkState& w) {
  if (w.fp == 0 || w.fp < w.sp) return Step::end;  // zero, or not above this frame (a loop)
  std::uint64_t v[2];
  if (!s.read(w.fp, v, 2) || v[1] == 0) return Step::end;
  w = {v[1], w.fp + sizeof v, v[0]};
  return Step::next;
}

// The walk of the `cfi` and `automatic` modes: the CFI where the pc's module has a row for
// it, else (automatic) the frame pointer, or at a function's entry the return address at
// [rsp] (the kernel's entry rule, as the frame-pointer walk takes it).
std::uint32_t capture_cfi(const Regs& regs, bool at_entry, std::uint32_t max, std::uint64_t* out,
                          bool fp_fallback) {
  std::uint32_t n = 0;
  if (max == 0) return 0;
  out[++n] = regs.rip;
  StackReader s{false, regs.rsp, 0};
  s.fast = own_stack(regs.rsp, s.hi);
  WalkState w{regs.rip, regs.rsp, regs.rbp};
  for (bool first = true; n < max; first = false) {
    Step step = cfi_step(s, w, first);
    if (step == Step::no_rule) {
      if (!fp_fallback) break;
      if (first && at_entry) {  // the caller's return address, then the caller's frame
        std::uint64_t ret = 0;
        step = s.read(w.sp, &ret, 1) && ret ? Step::next : Step::end;
        w = {ret, w.sp + sizeof ret, w.fp};
      } else {
        step = fp_step(s, w);
      }
    }
    if (step != Step::next) break;
    out[++n] = w.pc;
  }
  return n;
}

}  // namespace

void capture_ustack(const Regs& regs, bool at_entry, std::uint32_t max, std::uint64_t* out) {
  if (const unwind::Mode m = unwind::mode(); m != unwind::Mode::fp) [[unlikely]] {
    out[0] = capture_cfi(regs, at_entry, max, out, m == unwind::Mode::automatic);
    return;
  }
  std::uint32_t n = 0;
  if (max > 0) out[++n] = regs.rip;
  std::uint64_t hi = 0;
  const bool fast = own_stack(regs.rsp, hi);
  if (at_entry && n < max) {  // the caller's return address, not yet in the rbp chain
    std::uint64_t ret = 0;
    if (fast && regs.rsp <= hi - sizeof ret) {
      load_frame1(regs.rsp, &ret);
    } else if (!fast) {
      read_user(regs.rsp, &ret, sizeof ret);
    }
    if (ret) out[++n] = ret;
  }
  std::uint64_t fp = regs.rbp, floor = regs.rsp;
  while (n < max && fp != 0 && fp >= floor) {
    std::uint64_t w[2];  // saved rbp, return address
    if (fast && fp <= hi - sizeof w) {
      load_frame(fp, w);
    } else if (fast || !read_user(fp, w, sizeof w)) {
      break;  // past the thread's stack, or unreadable
    }
    if (w[1] == 0) break;
    out[++n] = w[1];
    floor = fp + sizeof w;  // the next frame is above this one
    fp = w[0];
  }
  out[0] = n;
}

StackBounds ustack_bounds_for_test() {
  return StackBounds{t_stack.lo, t_stack.hi};
}

// The stack table of ustack values: stacks interned by a 64-bit hash of their words, in
// an open-addressing index whose slots are claimed with one compare-and-swap, their words
// in an append-only arena. Nothing is ever removed (a value may be printed any time
// later), so a slot's words, once published (`off` release-stored after them), never
// change. Two stacks of one hash are one (a 2^-64 chance a pair, as a hash-keyed stack
// map's). A full table gives the empty stack.
namespace {

struct StackTable {
  static constexpr std::size_t kSlots = std::size_t{1} << 16;
  static constexpr std::size_t kProbe = 64;
  static constexpr std::uint64_t kWords = std::uint64_t{1} << 22;  // 32 MiB reserved
  std::atomic<std::uint64_t> hash[kSlots];
  std::atomic<std::uint32_t> off[kSlots];  // 1 + word offset; 0 while being written
  std::atomic<std::uint64_t> top{0};
  std::uint64_t* words = nullptr;
  std::uint32_t nonce = 0;
};
constexpr std::uint32_t kNoWords = ~std::uint32_t{0};  // StackTable::off of no frame
std::atomic<StackTable*> g_table{nullptr};             // made by stack_table_init, never freed
std::once_flag g_table_once;
// This process's nonce (usym markers have it without the table). A fork child takes a new
// one: its table diverges from its parent's, whose slots hotprobe names by the parent's
// nonce, so the child's new stacks must not pass for the parent's. The slots written
// before the fork are the child's too: markers of its ancestors' nonces (at most
// kAncestors) still read its table.
std::atomic<std::uint32_t> g_nonce{0};
std::once_flag g_nonce_once;
constexpr int kAncestors = 8;
std::uint32_t g_ancestors[kAncestors];  // written in a fork child only, one thread there
int g_ancestor_count = 0;

std::uint32_t fresh_nonce() {
  std::uint32_t v = 0;
  while (v == 0) {
    if (::getrandom(&v, sizeof v, 0) != static_cast<ssize_t>(sizeof v))
      v = static_cast<std::uint32_t>(::getpid()) * 2654435761u ^ 0x9e3779b9u;
  }
  return v;
}

void renonce_in_child() {
  if (g_ancestor_count < kAncestors)
    g_ancestors[g_ancestor_count++] = g_nonce.load(std::memory_order_relaxed);
  g_nonce.store(fresh_nonce(), std::memory_order_relaxed);
}

bool ancestor_nonce(std::uint32_t tag) {
  for (int i = 0; i < g_ancestor_count; ++i)
    if (g_ancestors[i] == tag) return true;
  return false;
}

// Another process's stacks (adopt_stacks): made once, never changed or freed (a printer
// may hold it), replaced by a newer set.
struct AdoptedStacks {
  std::uint32_t nonce = 0;
  std::unordered_map<std::uint64_t, std::vector<std::uint64_t>> slots;  // slot -> addresses
  // The one this replaced: never freed (a printer may still read it), and kept reachable.
  const AdoptedStacks* replaced = nullptr;
};
std::atomic<const AdoptedStacks*> g_adopted{nullptr};

std::uint32_t nonce() {
  std::call_once(g_nonce_once, [] {
    g_nonce.store(fresh_nonce(), std::memory_order_relaxed);
    ::pthread_atfork(nullptr, nullptr, renonce_in_child);
  });
  return g_nonce.load(std::memory_order_relaxed);
}

std::uint64_t hash_words(const std::uint64_t* w, std::size_t n) {
  std::uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
  for (std::size_t i = 0; i < n; ++i) {
    h ^= w[i];
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
  }
  return h | 1;  // 0 is an empty slot
}

// The slot of `words` (1 + n words), claimed and written if new; kSlots when full.
std::size_t intern(StackTable& t, const std::uint64_t* words) {
  const std::size_t n = 1 + words[0];
  const std::uint64_t h = hash_words(words, n);
  for (std::size_t i = 0; i < StackTable::kProbe; ++i) {
    const std::size_t slot = (h + i) & (StackTable::kSlots - 1);
    std::uint64_t seen = t.hash[slot].load(std::memory_order_acquire);
    if (seen == 0 && t.hash[slot].compare_exchange_strong(seen, h, std::memory_order_acq_rel)) {
      const std::uint64_t at = t.top.fetch_add(n, std::memory_order_relaxed);
      if (at + n > StackTable::kWords) {  // the arena is full: the slot names no frame
        t.off[slot].store(kNoWords, std::memory_order_release);
        return slot;
      }
      std::memcpy(t.words + at, words, n * sizeof *words);
      t.off[slot].store(static_cast<std::uint32_t>(at + 1), std::memory_order_release);
      return slot;
    }
    if (seen == h) return slot;
  }
  return StackTable::kSlots;
}

char hex_digit(unsigned v) {
  return static_cast<char>(v < 10 ? '0' + v : 'a' + v - 10);
}
// "\x1e" NONCE(8 hex) FORM HEX "\x1f".
std::uint32_t write_marker(std::uint32_t tag, SymbolForm form, std::uint64_t v, char* out) {
  std::uint32_t k = 0;
  out[k++] = kSymbolMarker;
  for (int s = 28; s >= 0; s -= 4)
    out[k++] = hex_digit((tag >> s) & 15);
  out[k++] = static_cast<char>(form);
  int s = 60;
  while (s > 0 && ((v >> s) & 15) == 0)
    s -= 4;
  for (; s >= 0; s -= 4)
    out[k++] = hex_digit(static_cast<unsigned>((v >> s) & 15));
  out[k++] = kSymbolMarkerEnd;
  out[k] = '\0';
  return k;
}

}  // namespace

void stack_table_init() {
  nonce();
  std::call_once(g_table_once, [] {
    void* t = ::mmap(nullptr, sizeof(StackTable), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    void* w = ::mmap(nullptr, StackTable::kWords * sizeof(std::uint64_t), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (t == MAP_FAILED || w == MAP_FAILED) return;  // values then print as empty stacks
    auto* table = new (t) StackTable;                // zero pages: every slot empty
    table->words = static_cast<std::uint64_t*>(w);
    g_table.store(table, std::memory_order_release);
  });
}

bool stack_values_used() {
  return g_table.load(std::memory_order_acquire) != nullptr;
}

std::uint32_t stack_marker(const std::uint64_t* words, SymbolForm form, char* out) {
  std::size_t slot = StackTable::kSlots;
  if (StackTable* t = g_table.load(std::memory_order_acquire)) slot = intern(*t, words);
  return write_marker(nonce(), form, slot, out);
}

std::uint32_t symbol_marker(std::uint64_t addr, char* out) {
  return write_marker(nonce(), SymbolForm::symbol, addr, out);
}

bool read_marker(std::string_view s, SymbolForm& form, std::uint64_t* words, std::size_t max) {
  if (s.size() < 12 || s.front() != kSymbolMarker || s.back() != kSymbolMarkerEnd) return false;
  const char* p = s.data() + 1;
  const std::uint32_t tag = static_cast<std::uint32_t>(hex_field(p, p + 8));
  if (p != s.data() + 9) return false;
  form = static_cast<SymbolForm>(*p++);
  // A stack's id means something in its own process only: this one, or the one whose
  // stacks were adopted; a symbol's address anywhere its modules are known (hotprobe
  // printing a map the program left).
  const AdoptedStacks* other = nullptr;
  if (tag != nonce() && form != SymbolForm::symbol && !ancestor_nonce(tag)) {
    other = g_adopted.load(std::memory_order_acquire);
    if (!other || other->nonce != tag) return false;
  }
  const char* end = s.data() + s.size() - 1;
  const std::uint64_t v = hex_field(p, end);
  if (p != end || max < 2) return false;
  switch (form) {
    case SymbolForm::symbol:
      words[0] = 1;
      words[1] = v;
      return true;
    case SymbolForm::stack:
    case SymbolForm::stack_perf:
    case SymbolForm::stack_raw:
    case SymbolForm::stack_build_id:
      break;
    default:
      return false;
  }
  words[0] = 0;
  if (other) {
    const auto it = other->slots.find(v);
    if (it == other->slots.end()) return true;  // not written before the program ended
    const std::size_t n = std::min<std::size_t>(it->second.size(), max - 1);
    words[0] = n;
    std::memcpy(words + 1, it->second.data(), n * sizeof *words);
    return true;
  }
  StackTable* const t = g_table.load(std::memory_order_acquire);
  if (!t || v >= StackTable::kSlots) return true;  // the table was full: no frame
  std::uint32_t off = 0;
  // The slot's writer publishes its words right after claiming it: at most a moment.
  for (int spin = 0; spin < 1000000 && (off = t->off[v].load(std::memory_order_acquire)) == 0;
       ++spin) {
  }
  if (off == 0 || off == kNoWords) return true;
  const std::uint64_t* w = t->words + (off - 1);
  const std::size_t n = std::min<std::size_t>(w[0], max - 1);
  words[0] = n;
  std::memcpy(words + 1, w + 1, n * sizeof *w);
  return true;
}

void export_stacks(std::vector<std::uint64_t>& out) {
  out.push_back(nonce());
  StackTable* const t = g_table.load(std::memory_order_acquire);
  if (!t) return;
  for (std::size_t slot = 0; slot < StackTable::kSlots; ++slot) {
    const std::uint32_t off = t->off[slot].load(std::memory_order_acquire);
    if (off == 0 || off == kNoWords) continue;  // empty, being written, or no frame
    const std::uint64_t* w = t->words + (off - 1);
    out.push_back(slot);
    out.insert(out.end(), w, w + 1 + std::min<std::uint64_t>(w[0], kMaxStackFrames));
  }
}

void adopt_stacks(std::span<const std::uint64_t> words) {
  if (words.empty()) return;
  auto* a = new AdoptedStacks;  // never freed: a printer may still read the one it replaces
  a->nonce = static_cast<std::uint32_t>(words[0]);
  a->replaced = g_adopted.load(std::memory_order_acquire);
  for (std::size_t i = 1; i + 1 < words.size();) {
    const std::uint64_t slot = words[i], n = words[i + 1];
    if (n > kMaxStackFrames || n > words.size() - i - 2) break;  // damaged: keep what read
    a->slots[slot].assign(words.begin() + static_cast<std::ptrdiff_t>(i + 2),
                          words.begin() + static_cast<std::ptrdiff_t>(i + 2 + n));
    i += 2 + n;
  }
  g_adopted.store(a, std::memory_order_release);
}

std::int64_t stack_frame_count(std::string_view s) {
  if (s.empty() || s.front() != kSymbolMarker) return 0;
  std::uint64_t words[1 + kMaxStackFrames];
  SymbolForm form{};
  if (!read_marker(s, form, words, std::size(words)) || form == SymbolForm::symbol) return 0;
  return static_cast<std::int64_t>(words[0]);
}

namespace nodes {

std::uint32_t s_ustack_value(const Node* n, Frame& f, char* out) {
  std::uint64_t words[1 + ast::kUstackFrames];
  words[0] = 0;
  const auto limit = static_cast<std::uint32_t>(n->imm >> 8);
  if (f.hit && f.hit->regs) {
    const bool entry = f.probe && f.probe->probe.kind == Probe::Kind::uprobe &&
                       f.hit->probe_address && entry_instruction(f.hit->probe_address);
    capture_ustack(*f.hit->regs, entry, std::min(limit, ast::kUstackFrames), words);
  }
  return stack_marker(words, static_cast<SymbolForm>(n->imm & 0xff), out);
}

std::uint32_t s_usym_value(const Node* n, Frame& f, char* out) {
  return symbol_marker(static_cast<std::uint64_t>(n->a->i(n->a, f)), out);
}

std::int64_t i_stack_len(const Node* n, Frame& f) {
  char buf[kStrBytes];
  const std::uint32_t len = n->a->s(n->a, f, buf);
  return stack_frame_count(std::string_view(buf, std::min<std::uint32_t>(len, kStrBytes)));
}

}  // namespace nodes

}  // namespace hotprobe::script
