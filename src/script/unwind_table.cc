#include "script/unwind_table.h"

#include <elf.h>
#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <limits>
#include <mutex>
#include <string>
#include <string_view>

namespace hp::core {
// The thread-state guard of hotprobe's own threads (core/thread_state.h): a hit on the
// builder thread (its mallocs, at `uprobe:libc:malloc`) runs no handler. Exported by the
// engine for the agent; the script layer reaches only this one function of it.
__attribute__((visibility("default"))) void mark_own_thread() noexcept;
}  // namespace hp::core

namespace hotprobe::script::unwind {
namespace {

// DWARF register numbers of x86-64.
constexpr std::uint64_t kRbp = 6, kRsp = 7, kRa = 16;

// A cursor over CFI bytes of the loaded image.
struct Cursor {
  const std::uint8_t* p;
  const std::uint8_t* end;
  bool ok = true;

  bool has(std::size_t n) {
    if (static_cast<std::size_t>(end - p) < n) ok = false;
    return ok;
  }
  template <typename T>
  T fixed() {
    T v{};
    if (!has(sizeof v)) return v;
    std::memcpy(&v, p, sizeof v);
    p += sizeof v;
    return v;
  }
  std::uint64_t uleb() {
    std::uint64_t v = 0;
    for (unsigned shift = 0;; shift += 7) {
      if (!has(1) || shift >= 64) return ok = false, 0;
      const std::uint8_t b = *p++;
      v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
  }
  std::int64_t sleb() {
    std::uint64_t v = 0;
    unsigned shift = 0;
    for (;; shift += 7) {
      if (!has(1) || shift >= 64) return ok = false, 0;
      const std::uint8_t b = *p++;
      v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) {
        if (shift + 7 < 64 && (b & 0x40)) v |= ~std::uint64_t{0} << (shift + 7);
        return static_cast<std::int64_t>(v);
      }
    }
  }
  // A DW_EH_PE_* encoded pointer. pcrel is relative to where the field is in memory, so
  // the result is a run-time address; datarel to .eh_frame_hdr (`data_base`, run-time);
  // absptr is a link-time address (`bias` added).
  std::uint64_t pointer(std::uint8_t enc, std::uint64_t data_base, std::uint64_t bias) {
    if (enc == 0xff) return ok = false, 0;  // DW_EH_PE_omit
    const auto field = reinterpret_cast<std::uint64_t>(p);
    std::uint64_t v = 0;
    switch (enc & 0x0f) {
      case 0x00:
      case 0x04:
      case 0x0c:
        v = fixed<std::uint64_t>();
        break;
      case 0x01:
        v = uleb();
        break;
      case 0x02:
        v = fixed<std::uint16_t>();
        break;
      case 0x03:
        v = fixed<std::uint32_t>();
        break;
      case 0x09:
        v = static_cast<std::uint64_t>(sleb());
        break;
      case 0x0a:
        v = static_cast<std::uint64_t>(static_cast<std::int64_t>(fixed<std::int16_t>()));
        break;
      case 0x0b:
        v = static_cast<std::uint64_t>(static_cast<std::int64_t>(fixed<std::int32_t>()));
        break;
      default:
        return ok = false, 0;
    }
    switch (enc & 0x70) {
      case 0x00:
        return v + bias;
      case 0x10:
        return v + field;
      case 0x30:
        return v + data_base;
      default:
        return ok = false, 0;
    }
  }
};

// A register's rule as far as the table needs it.
struct RegRule {
  enum K : std::uint8_t { same, offset, undefined, other } k = same;
  std::int64_t off = 0;  // offset(N): saved at CFA + N
};
struct State {
  std::uint64_t cfa_reg = kRsp;
  std::int64_t cfa_off = 8;
  bool cfa_expr = false;
  RegRule rbp, ra;
};

struct Cie {
  std::uint64_t code_align = 1;
  std::int64_t data_align = -8;
  std::uint64_t ra_reg = kRa;
  std::uint8_t fde_enc = 0;
  bool has_z = false, signal = false;
  const std::uint8_t* insns = nullptr;
  const std::uint8_t* end = nullptr;
};

// Reads the CIE at `at` (its length field); false for one this reader does not take.
bool read_cie(const std::uint8_t* at, Cie& c) {
  c = Cie{};
  Cursor r{at, at + 12};
  const std::uint32_t len = r.fixed<std::uint32_t>();
  if (!r.ok || len == 0 || len >= 0xfffffff0u || len > (1u << 16)) return false;
  r.end = at + 4 + len;
  if (r.fixed<std::uint32_t>() != 0) return false;  // the CIE id of .eh_frame
  const std::uint8_t version = r.fixed<std::uint8_t>();
  const auto* aug = r.p;
  while (r.has(1) && *r.p)
    ++r.p;
  if (!r.ok) return false;
  const std::string_view augmentation(reinterpret_cast<const char*>(aug),
                                      static_cast<std::size_t>(r.p - aug));
  ++r.p;
  if (augmentation.find("eh") != std::string_view::npos) return false;  // pre-GCC 3 form
  c.code_align = r.uleb();
  c.data_align = r.sleb();
  c.ra_reg = version == 1 ? r.fixed<std::uint8_t>() : r.uleb();
  if (!augmentation.empty() && augmentation[0] == 'z') {
    c.has_z = true;
    const std::uint64_t n = r.uleb();
    if (!r.has(n)) return false;
    const std::uint8_t* data_end = r.p + n;
    for (char a : augmentation.substr(1)) {
      if (a == 'R') {
        c.fde_enc = r.fixed<std::uint8_t>();
      } else if (a == 'L') {
        r.fixed<std::uint8_t>();
      } else if (a == 'P') {
        const std::uint8_t enc = r.fixed<std::uint8_t>();
        r.pointer(enc & 0x7f, 0, 0);  // the personality routine: skipped
      } else if (a == 'S') {
        c.signal = true;
      } else if (a != 'B') {
        return false;
      }
    }
    r.p = data_end;
  } else if (!augmentation.empty()) {
    return false;
  }
  c.insns = r.p;
  c.end = r.end;
  return r.ok && c.ra_reg == kRa && c.code_align != 0;
}

// The rows of one module, pcs as offsets from its load address.
class Builder {
 public:
  Builder(std::uint64_t base, std::vector<Row>& rows) : base_(base), rows_(rows) {}

  // One FDE (at its length field), with `hdr` the run-time address of .eh_frame_hdr.
  void fde(const std::uint8_t* at, std::uint64_t hdr) {
    Cursor r{at, at + 8};
    const std::uint32_t len = r.fixed<std::uint32_t>();
    if (!r.ok || len == 0 || len >= 0xfffffff0u || len > (1u << 20)) return;
    r.end = at + 4 + len;
    const std::uint8_t* id_at = r.p;
    const std::uint32_t cie_ptr = r.fixed<std::uint32_t>();
    if (!r.ok || cie_ptr == 0) return;  // a CIE
    const std::uint8_t* cie_at = id_at - cie_ptr;
    if (cie_at != cie_at_) {
      cie_ok_ = read_cie(cie_at, cie_);
      cie_at_ = cie_at;
    }
    const std::uint64_t begin = r.pointer(cie_.fde_enc, hdr, base_);
    const std::uint64_t range = r.pointer(cie_.fde_enc & 0x0f, 0, 0);
    if (!r.ok || range == 0 || begin < base_ || begin - base_ + range > 0xffffffffu) return;
    if (cie_.has_z) {
      const std::uint64_t n = r.uleb();
      if (!r.has(n)) return;
      r.p += n;
    }
    const std::uint64_t start = begin - base_, stop = start + range;
    if (!cie_ok_ || cie_.signal) {  // a signal trampoline's frame: the table cannot hold it
      emit_unknown(start);
      emit_unknown(stop);
      return;
    }
    State s;
    Cursor ci{cie_.insns, cie_.end};
    std::uint64_t loc = start;
    run(ci, s, s, loc, stop, false);
    const State initial = s;
    loc = start;
    if (run(r, s, initial, loc, stop, true) && loc < stop) emit(loc, s);  // the last row
    emit_unknown(stop);  // up to the next FDE: no rule
  }

 private:
  // Runs CFA instructions; `emit_rows`: an FDE's, each advance ends the row at `loc`
  // (the rule the instructions since the last advance made). False when it failed (an
  // unknown row was emitted there).
  bool run(Cursor& r, State& s, const State& initial, std::uint64_t& loc, std::uint64_t stop,
           bool emit_rows) {
    State stack[8];
    int depth = 0;
    const auto rule_of = [&](std::uint64_t reg) -> RegRule* {
      return reg == kRbp ? &s.rbp : reg == kRa ? &s.ra : nullptr;
    };
    const auto initial_of = [&](std::uint64_t reg) {
      return reg == kRbp ? initial.rbp : initial.ra;
    };
    const auto set_offset = [&](std::uint64_t reg, std::int64_t off) {
      if (RegRule* x = rule_of(reg)) *x = {RegRule::offset, off};
    };
    const auto set = [&](std::uint64_t reg, RegRule::K k) {
      if (RegRule* x = rule_of(reg)) *x = {k, 0};
    };
    const auto advance = [&](std::uint64_t delta) {
      const std::uint64_t next = loc + delta * cie_.code_align;
      if (emit_rows && next > loc && loc < stop) emit(loc, s);
      loc = next;
    };
    while (r.ok && r.p < r.end && loc < stop) {
      const std::uint8_t op = *r.p++;
      const std::uint8_t low = op & 0x3f;
      switch (op >> 6) {
        case 1:  // DW_CFA_advance_loc
          advance(low);
          continue;
        case 2:  // DW_CFA_offset
          set_offset(low, static_cast<std::int64_t>(r.uleb()) * cie_.data_align);
          continue;
        case 3:  // DW_CFA_restore
          if (RegRule* x = rule_of(low)) *x = initial_of(low);
          continue;
        default:
          break;
      }
      switch (op) {
        case 0x00:  // nop
          break;
        case 0x01: {  // set_loc
          const std::uint64_t to = r.pointer(cie_.fde_enc, 0, base_);
          if (to - base_ < loc) return fail(loc, emit_rows);
          advance((to - base_ - loc) / cie_.code_align);
          break;
        }
        case 0x02:
          advance(r.fixed<std::uint8_t>());
          break;
        case 0x03:
          advance(r.fixed<std::uint16_t>());
          break;
        case 0x04:
          advance(r.fixed<std::uint32_t>());
          break;
        case 0x05: {  // offset_extended
          const std::uint64_t reg = r.uleb();
          set_offset(reg, static_cast<std::int64_t>(r.uleb()) * cie_.data_align);
          break;
        }
        case 0x06: {  // restore_extended
          const std::uint64_t reg = r.uleb();
          if (RegRule* x = rule_of(reg)) *x = initial_of(reg);
          break;
        }
        case 0x07:  // undefined
          set(r.uleb(), RegRule::undefined);
          break;
        case 0x08:  // same_value
          set(r.uleb(), RegRule::same);
          break;
        case 0x09: {  // register: another register holds it
          const std::uint64_t reg = r.uleb();
          r.uleb();
          set(reg, RegRule::other);
          break;
        }
        case 0x0a:  // remember_state
          if (depth == 8) return fail(loc, emit_rows);
          stack[depth++] = s;
          break;
        case 0x0b:  // restore_state: the remembered row, its CFA rule too (as GCC means it)
          if (depth == 0) return fail(loc, emit_rows);
          s = stack[--depth];
          break;
        case 0x0c:  // def_cfa
          s.cfa_reg = r.uleb();
          s.cfa_off = static_cast<std::int64_t>(r.uleb());
          s.cfa_expr = false;
          break;
        case 0x0d:  // def_cfa_register
          s.cfa_reg = r.uleb();
          s.cfa_expr = false;
          break;
        case 0x0e:  // def_cfa_offset
          s.cfa_off = static_cast<std::int64_t>(r.uleb());
          break;
        case 0x0f: {  // def_cfa_expression
          const std::uint64_t n = r.uleb();
          if (!r.has(n)) break;
          r.p += n;
          s.cfa_expr = true;
          break;
        }
        case 0x10:    // expression
        case 0x16: {  // val_expression
          const std::uint64_t reg = r.uleb();
          const std::uint64_t n = r.uleb();
          if (!r.has(n)) break;
          r.p += n;
          set(reg, RegRule::other);
          break;
        }
        case 0x11: {  // offset_extended_sf
          const std::uint64_t reg = r.uleb();
          set_offset(reg, r.sleb() * cie_.data_align);
          break;
        }
        case 0x12:  // def_cfa_sf
          s.cfa_reg = r.uleb();
          s.cfa_off = r.sleb() * cie_.data_align;
          s.cfa_expr = false;
          break;
        case 0x13:  // def_cfa_offset_sf
          s.cfa_off = r.sleb() * cie_.data_align;
          break;
        case 0x14:    // val_offset
        case 0x15: {  // val_offset_sf
          const std::uint64_t reg = r.uleb();
          if (op == 0x14) {
            r.uleb();
          } else {
            r.sleb();
          }
          set(reg, RegRule::other);
          break;
        }
        case 0x2e:  // GNU_args_size
          r.uleb();
          break;
        case 0x2f: {  // GNU_negative_offset_extended
          const std::uint64_t reg = r.uleb();
          set_offset(reg, -static_cast<std::int64_t>(r.uleb()) * cie_.data_align);
          break;
        }
        default:  // an instruction this reader does not know: no rule from here on
          return fail(loc, emit_rows);
      }
    }
    if (!r.ok) return fail(loc, emit_rows);
    return true;
  }

  bool fail(std::uint64_t loc, bool emit_rows) {
    if (emit_rows) emit_unknown(loc);
    return false;
  }

  void emit(std::uint64_t pc, const State& s) {
    Row row{static_cast<std::uint32_t>(pc), 0, 0, Kind::unknown};
    const bool ra_at_cfa = s.ra.k == RegRule::offset && s.ra.off == -8;
    const bool rbp_ok = s.rbp.k != RegRule::other &&
                        (s.rbp.k != RegRule::offset ||
                         (s.rbp.off != 0 && s.rbp.off >= std::numeric_limits<std::int16_t>::min() &&
                          s.rbp.off <= std::numeric_limits<std::int16_t>::max()));
    if (s.ra.k == RegRule::undefined) {
      row.kind = Kind::outermost;
    } else if (!s.cfa_expr && (s.cfa_reg == kRsp || s.cfa_reg == kRbp) && ra_at_cfa && rbp_ok &&
               s.cfa_off >= 8 && s.cfa_off <= std::numeric_limits<std::int32_t>::max()) {
      row.kind = s.cfa_reg == kRsp ? Kind::rsp : Kind::rbp;
      row.cfa_off = static_cast<std::int32_t>(s.cfa_off);
      row.rbp_off = s.rbp.k == RegRule::offset ? static_cast<std::int16_t>(s.rbp.off) : 0;
    }
    push(row);
  }
  void emit_unknown(std::uint64_t pc) {
    push(Row{static_cast<std::uint32_t>(pc), 0, 0, Kind::unknown});
  }
  void push(const Row& row) {
    // A row at the pc of the last one replaces it (an FDE starting where the last ended).
    if (!rows_.empty() && rows_.back().pc == row.pc) rows_.pop_back();
    if (!rows_.empty() && rows_.back().pc > row.pc) return;  // out of order: dropped
    if (!rows_.empty() && rows_.back().kind == row.kind && rows_.back().cfa_off == row.cfa_off &&
        rows_.back().rbp_off == row.rbp_off)
      return;  // the same rule goes on
    rows_.push_back(row);
  }

  std::uint64_t base_;
  std::vector<Row>& rows_;
  const std::uint8_t* cie_at_ = nullptr;
  Cie cie_;
  bool cie_ok_ = false;
};

// The rows of a loaded module from its .eh_frame_hdr at run-time address `hdr`: every FDE
// its search table names, in pc order.
void build_rows(std::uint64_t base, std::uint64_t hdr, std::uint64_t hdr_size,
                std::vector<Row>& rows) {
  const auto* h = reinterpret_cast<const std::uint8_t*>(hdr);
  Cursor r{h, h + hdr_size};
  if (hdr_size < 12 || r.fixed<std::uint8_t>() != 1) return;  // version
  const std::uint8_t ptr_enc = r.fixed<std::uint8_t>();
  const std::uint8_t count_enc = r.fixed<std::uint8_t>();
  const std::uint8_t table_enc = r.fixed<std::uint8_t>();
  r.pointer(ptr_enc, hdr, base);  // .eh_frame itself
  const std::uint64_t count = r.pointer(count_enc, hdr, 0);
  // The table linkers write: (initial location, FDE) pairs of 4-byte offsets from the
  // header, sorted by location.
  if (!r.ok || table_enc != 0x3b || count > static_cast<std::uint64_t>(r.end - r.p) / 8) return;
  rows.reserve(count * 4);
  Builder b(base, rows);
  for (std::uint64_t i = 0; i < count; ++i) {
    std::int32_t fde_off;
    std::memcpy(&fde_off, r.p + 8 * i + 4, 4);
    b.fde(h + fde_off, hdr);
  }
  rows.shrink_to_fit();
}

// Rows are found through a bucket index: the rows of pcs in [b << kBucketShift,
// (b + 1) << kBucketShift) are rows[index[b] .. index[b + 1]), so the binary search runs
// over a few rows. 32-byte buckets: -O2 code has a row every 10 to 50 bytes (a push or
// pop is one), and each halving of the search is a load the next one waits for; 256-byte
// buckets left 20 to 30 rows to search in such code and a frame cost 50% more. libc:
// 48,000 buckets, 190 KB beside its 340 KB of rows.
constexpr unsigned kBucketShift = 5;
// A module as the hit sees it: its executable range and its table (nullptr: none, or
// not built yet). Never changed once published.
struct Module {
  std::uint64_t lo, hi, base;
  const Row* rows;
  const std::uint32_t* index;  // buckets + 1 entries
  std::uint32_t n, buckets;
};
struct ModuleSet {
  std::size_t n = 0;
  const Module* m = nullptr;  // n of them, by lo
};

// The published set; replaced whole when the module list changed, never freed (a hit may
// be reading an old one).
std::atomic<const ModuleSet*> g_set{nullptr};
std::mutex g_build_mu;  // one builder at a time
std::atomic<std::size_t> g_sets_published{0};
// The tables built so far, by module load address and range: kept for the process's
// life (a hit may hold one); a module unmapped and another mapped at its address is
// told apart by its range and its program headers.
struct Built {
  std::uint64_t base, lo, hi;
  const void* phdr;
  std::vector<Row> rows;
  std::vector<std::uint32_t> index;  // Module::index
};
std::vector<Built*>* g_built = nullptr;  // guarded by g_build_mu
// Every set published, the replaced ones included: never freed, and kept reachable (leak
// checkers see them as held, which they are: a hit may still read one).
std::vector<const ModuleSet*>* g_sets = nullptr;  // guarded by g_build_mu

void build_index(Built& b) {
  if (b.rows.empty()) return;
  const std::uint32_t buckets = (b.rows.back().pc >> kBucketShift) + 1;
  b.index.assign(buckets + 1, 0);
  std::uint32_t r = 0;
  for (std::uint32_t k = 0; k <= buckets; ++k) {
    const std::uint64_t start = std::uint64_t{k} << kBucketShift;
    while (r < b.rows.size() && b.rows[r].pc < start)
      ++r;
    b.index[k] = r;  // the first row at or after the bucket's start
  }
}

// A fork waits for a rebuild that is under way: glibc (2.36) leaves dl_iterate_phdr's
// lock held in a child forked while another thread is inside it, so the child's own
// dl_iterate_phdr (a C++ throw's unwinder calls it) would never return; and a child
// forked in the middle of a rebuild would find the list half changed. A rebuild takes
// milliseconds, and only when a module is new.
void before_fork() {
  g_build_mu.lock();
}
void after_fork() {
  g_build_mu.unlock();
}
[[maybe_unused]] const int g_atfork = [] {
  pthread_atfork(&before_fork, &after_fork, &after_fork);
  return 0;
}();

std::atomic<std::uint32_t> g_wanted{0};  // a hit met a pc in no module
std::atomic<int> g_builder_pid{0};       // the process that runs the builder thread

std::atomic<int> g_mode{-1};

const char* mode_env() {
  return std::getenv("HOTPROBE_USTACK");  // NOLINT(concurrency-mt-unsafe): read only
}
Mode read_mode() {
  const char* v = mode_env();
  if (v && std::strcmp(v, "cfi") == 0) return Mode::cfi;
  if (v && std::strcmp(v, "auto") == 0) return Mode::automatic;
  return Mode::fp;
}

struct Gather {
  std::vector<Module> modules;
  std::size_t with_table = 0;
};

int gather_module(dl_phdr_info* info, std::size_t, void* arg) {
  auto& g = *static_cast<Gather*>(arg);
  std::uint64_t lo = ~std::uint64_t{0}, hi = 0, hdr = 0, hdr_size = 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type == PT_LOAD && (ph.p_flags & PF_X)) {
      lo = std::min<std::uint64_t>(lo, info->dlpi_addr + ph.p_vaddr);
      hi = std::max<std::uint64_t>(hi, info->dlpi_addr + ph.p_vaddr + ph.p_memsz);
    } else if (ph.p_type == PT_GNU_EH_FRAME) {
      hdr = info->dlpi_addr + ph.p_vaddr;
      hdr_size = ph.p_memsz;
    }
  }
  if (hi <= lo) return 0;
  Built* b = nullptr;
  for (Built* x : *g_built)
    if (x->base == info->dlpi_addr && x->lo == lo && x->hi == hi && x->phdr == info->dlpi_phdr) {
      b = x;
      break;
    }
  if (!b) {
    b = new Built{info->dlpi_addr, lo, hi, info->dlpi_phdr, {}};
    if (hdr) build_rows(info->dlpi_addr, hdr, hdr_size, b->rows);
    build_index(*b);
    g_built->push_back(b);
  }
  const bool table = !b->rows.empty();
  g.modules.push_back(Module{lo, hi, b->base, table ? b->rows.data() : nullptr,
                             table ? b->index.data() : nullptr,
                             static_cast<std::uint32_t>(b->rows.size()),
                             static_cast<std::uint32_t>(table ? b->index.size() - 1 : 0)});
  if (!b->rows.empty()) ++g.with_table;
  return 0;
}

// Builds what is missing and publishes the set of the modules mapped now.
std::size_t rebuild() {
  std::lock_guard lock(g_build_mu);
  if (!g_built) g_built = new std::vector<Built*>;
  Gather g;
  dl_iterate_phdr(&gather_module, &g);
  std::sort(g.modules.begin(), g.modules.end(),
            [](const Module& a, const Module& b) { return a.lo < b.lo; });
  // Nothing new (a pc in no module, JIT code, asked again): the set stays, so that sets,
  // never freed, are as many as the changes of the module list.
  const ModuleSet* old = g_set.load(std::memory_order_relaxed);
  if (old && old->n == g.modules.size() &&
      std::equal(g.modules.begin(), g.modules.end(), old->m, [](const Module& a, const Module& b) {
        return a.lo == b.lo && a.hi == b.hi && a.base == b.base && a.rows == b.rows;
      }))
    return g.with_table;
  auto* modules = new Module[g.modules.size()];
  std::copy(g.modules.begin(), g.modules.end(), modules);
  const auto* set = new ModuleSet{g.modules.size(), modules};
  if (!g_sets) g_sets = new std::vector<const ModuleSet*>;
  g_sets->push_back(set);
  g_set.store(set, std::memory_order_release);  // the old set stays: a hit may read it
  g_sets_published.fetch_add(1, std::memory_order_relaxed);
  return g.with_table;
}

void* builder_main(void*) {
  hp::core::mark_own_thread();
  pthread_setname_np(pthread_self(), "hotprobe-unwind");
  for (;;) {
    g_wanted.wait(0, std::memory_order_acquire);
    rebuild();
    // At most ten rebuilds a second: a pc that stays in no module (JIT code) asks again.
    timespec pause{0, 100'000'000};
    while (nanosleep(&pause, &pause) != 0) {
    }
    g_wanted.store(0, std::memory_order_release);
  }
  return nullptr;
}

void start_builder() {
  const int pid = ::getpid();
  int seen = g_builder_pid.load();
  if (seen == pid || !g_builder_pid.compare_exchange_strong(seen, pid)) return;
  pthread_attr_t attr;
  if (pthread_attr_init(&attr) != 0) return;
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, std::size_t{256} << 10);
  // No handler of the program runs on it.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t t;
  if (pthread_create(&t, &attr, &builder_main, nullptr) != 0) g_builder_pid.store(0);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  pthread_attr_destroy(&attr);
}

}  // namespace

Mode mode() {
  int m = g_mode.load(std::memory_order_relaxed);
  if (m < 0) [[unlikely]] {
    m = static_cast<int>(read_mode());
    g_mode.store(m, std::memory_order_relaxed);
  }
  return static_cast<Mode>(m);
}

std::string mode_error() {
  const char* v = mode_env();
  if (!v || !*v || std::strcmp(v, "fp") == 0 || std::strcmp(v, "cfi") == 0 ||
      std::strcmp(v, "auto") == 0)
    return "";
  return std::string("HOTPROBE_USTACK=") + v +
         " is not a stack walk: use fp (frame pointers, the default), auto (the modules' CFI "
         "where they have it, frame pointers elsewhere) or cfi (CFI only), or unset it";
}

void set_mode(Mode m) {
  g_mode.store(static_cast<int>(m), std::memory_order_relaxed);
}

Found find(std::uint64_t pc, Rule& out) {
  const ModuleSet* set = g_set.load(std::memory_order_acquire);
  const Module* mod = nullptr;
  // The module of the last lookup of this thread's, while the set is the same: a walk
  // stays in a module for several frames.
  static constinit thread_local struct {
    const ModuleSet* set;
    const Module* mod;
  } t_last __attribute__((tls_model("initial-exec"))) = {nullptr, nullptr};
  if (t_last.set == set && set && pc - t_last.mod->lo < t_last.mod->hi - t_last.mod->lo) {
    mod = t_last.mod;
  } else if (set) {
    std::size_t lo = 0, hi = set->n;  // the last module with m.lo <= pc
    while (lo < hi) {
      const std::size_t mid = lo + (hi - lo) / 2;
      if (set->m[mid].lo <= pc) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    if (lo > 0 && pc < set->m[lo - 1].hi) {
      mod = &set->m[lo - 1];
      t_last = {set, mod};
    }
  }
  if (!mod) {
    if (g_wanted.load(std::memory_order_relaxed) == 0) {
      std::uint32_t none = 0;
      if (g_wanted.compare_exchange_strong(none, 1, std::memory_order_acq_rel))
        g_wanted.notify_one();
    }
    return Found::no_table;
  }
  out = Rule{};
  if (!mod->rows) return Found::rule;  // no .eh_frame_hdr: unknown
  const std::uint64_t off = pc - mod->base;
  // The last row with pc <= off: in the pc's bucket, or the one before it. A search
  // without branches on the rows (conditional moves): a walk's frames are in other
  // functions each time, which no branch predictor learns.
  const std::uint64_t bucket = off >> kBucketShift;
  std::uint32_t lo = 0, hi = mod->n;
  if (bucket < mod->buckets) {
    lo = mod->index[bucket] ? mod->index[bucket] - 1 : 0;
    hi = mod->index[bucket + 1];
  }
  if (lo >= hi) return Found::rule;
  const Row* at = mod->rows + lo;
  for (std::uint32_t len = hi - lo; len > 1;) {
    const std::uint32_t half = len / 2;
    at = at[half].pc <= off ? at + half : at;
    len -= half;
  }
  if (at->pc > off) return Found::rule;  // before the module's first row
  const Row& row = *at;
  out.kind = row.kind;
  out.cfa_off = row.cfa_off;
  out.rbp_off = row.rbp_off;
  return Found::rule;
}

void prepare() {
  if (mode() == Mode::fp) return;
  static std::atomic<int> prepared_pid{0};  // once per process: later modules are the builder's
  if (prepared_pid.exchange(::getpid()) != ::getpid()) rebuild();
  start_builder();
}

std::vector<Row> rows_for_test(std::uint64_t addr) {
  std::lock_guard lock(g_build_mu);
  if (!g_built) return {};
  for (const Built* b : *g_built)
    if (addr >= b->lo && addr < b->hi) return b->rows;
  return {};
}

std::size_t build_now_for_test() {
  return rebuild();
}

std::size_t sets_published_for_test() {
  return g_sets_published.load(std::memory_order_relaxed);
}

}  // namespace hotprobe::script::unwind
