#include "script/run_stack.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstring>

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

}  // namespace hotprobe::script
