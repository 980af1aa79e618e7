#include "script/run_nodes.h"

#include <pthread.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "hotprobe/symbols.h"
#include "script/run_clock.h"
#include "script/run_thread.h"

namespace hotprobe::script {
namespace nodes {

using ast::BinaryOp;
using thread::g_gid;
using thread::g_uid;
using thread::ids;
using thread::ThreadIds;

// ---------------------------------------------------------------------------------------

// Literals and variables.
std::int64_t i_const(const Node* n, Frame&) {
  return n->imm;
}
std::uint32_t s_const(const Node* n, Frame&, char* out) {
  return copy_str(out, n->text);
}
std::int64_t i_var(const Node* n, Frame& f) {
  return f.islots[n->imm];
}
std::uint32_t s_var(const Node* n, Frame& f, char* out) {
  return copy_str(out,
                  std::string_view(f.sslots[n->imm], strnlen(f.sslots[n->imm], kStrBytes - 1)));
}

// Builtins.
template <int I>
std::int64_t i_arg(const Node*, Frame& f) {
  return f.hit ? static_cast<std::int64_t>(f.hit->regs->arg(I)) : 0;
}
std::int64_t i_retval(const Node*, Frame& f) {
  return f.hit ? static_cast<std::int64_t>(f.hit->regs->ret()) : 0;
}
// reg("name"): the word at byte offset imm of the probed thread's Regs.
std::int64_t i_reg(const Node* n, Frame& f) {
  if (!f.hit || !f.hit->regs) return 0;
  std::int64_t v;
  std::memcpy(&v, reinterpret_cast<const char*>(f.hit->regs) + n->imm, sizeof v);
  return v;
}
std::int64_t i_tid(const Node*, Frame&) {
  return ids().tid;
}
std::int64_t i_pid(const Node*, Frame&) {
  return ids().pid;
}
std::int64_t i_nsecs(const Node*, Frame&) {
  return clock::now();
}
std::int64_t i_elapsed(const Node*, Frame& f) {
  return clock::now() - f.rt->start_ns;
}
std::int64_t i_cpu(const Node*, Frame&) {
  return sched_getcpu();
}
std::int64_t i_uid(const Node*, Frame&) {
  return g_uid;
}
std::int64_t i_gid(const Node*, Frame&) {
  return g_gid;
}
std::uint32_t s_comm(const Node*, Frame&, char* out) {
  ThreadIds& t = ids();
  if (!t.comm_set) [[unlikely]] {
    // The thread's name, read once per thread (a later rename is not seen).
    prctl(PR_GET_NAME, t.comm, 0, 0, 0);
    t.comm[15] = 0;
    t.comm_set = true;
  }
  return copy_str(out, t.comm);
}
// The function a glob probe's hit is in (named at spec() time, or now on a miss).
static std::uint32_t matched_function(const ProbeCtx* p, std::uint64_t address, char* out) {
  std::lock_guard lock(p->func_mu);
  auto it = p->funcs.find(address);
  if (it == p->funcs.end()) {
    auto fi = function_at(address);
    it = p->funcs.emplace(address, fi ? fi->name : std::string()).first;
  }
  return copy_str(out, it->second);
}
// `probe`: the probe as written; for a glob, the probe it matched (uprobe:MODULE:fn05),
// as bpftrace names each probe a wildcard expands to.
std::uint32_t s_probe(const Node*, Frame& f, char* out) {
  const ProbeCtx* p = f.probe;
  if (!p) return copy_str(out, "");
  if (!p->glob || !f.hit) return copy_str(out, p->probe.text);
  char name[kStrBytes];
  const std::uint32_t len = matched_function(p, f.hit->probe_address, name);
  const std::uint32_t n = copy_str(out, p->prefix);
  const std::uint32_t k = std::min<std::uint32_t>(len, kStrBytes - 1 - n);
  std::memcpy(out + n, name, k);
  out[n + k] = 0;
  return n + k;
}
std::uint32_t s_func(const Node*, Frame& f, char* out) {
  const ProbeCtx* p = f.probe;
  if (!p) return copy_str(out, "");
  if (!p->glob || !f.hit) return copy_str(out, p->func);
  return matched_function(p, f.hit->probe_address, out);
}

// Arithmetic (run_nodes.h: u, s64).
// name: both operands evaluated; name##_k: the right operand is a literal, in imm (one
// indirect call less: `arg0 > 10`).
#define HP_BIN(name, expr)                         \
  std::int64_t name(const Node* n, Frame& f) {     \
    const std::int64_t x = n->a->i(n->a, f);       \
    const std::int64_t y = n->b->i(n->b, f);       \
    return (expr);                                 \
  }                                                \
  std::int64_t name##_k(const Node* n, Frame& f) { \
    const std::int64_t x = n->a->i(n->a, f);       \
    const std::int64_t y = n->imm;                 \
    return (expr);                                 \
  }
HP_BIN(i_add, s64(u(x) + u(y)))
HP_BIN(i_sub, s64(u(x) - u(y)))
HP_BIN(i_mul, s64(u(x) * u(y)))
HP_BIN(i_div, y == 0 ? 0 : s64(u(x) / u(y)))
HP_BIN(i_mod, y == 0 ? 0 : s64(u(x) % u(y)))
HP_BIN(i_shl, s64(u(x) << (u(y) & 63)))
HP_BIN(i_shr, s64(u(x) >> (u(y) & 63)))
HP_BIN(i_lt, x < y)
HP_BIN(i_le, x <= y)
HP_BIN(i_gt, x > y)
HP_BIN(i_ge, x >= y)
HP_BIN(i_ult, u(x) < u(y))
HP_BIN(i_ule, u(x) <= u(y))
HP_BIN(i_ugt, u(x) > u(y))
HP_BIN(i_uge, u(x) >= u(y))
HP_BIN(i_eq, x == y)
HP_BIN(i_ne, x != y)
HP_BIN(i_band, x& y)
HP_BIN(i_bxor, x ^ y)
HP_BIN(i_bor, x | y)
#undef HP_BIN
std::int64_t i_land(const Node* n, Frame& f) {
  return n->a->i(n->a, f) && n->b->i(n->b, f);
}
std::int64_t i_lor(const Node* n, Frame& f) {
  return n->a->i(n->a, f) || n->b->i(n->b, f);
}
std::int64_t i_seq(const Node* n, Frame& f) {
  char x[kStrBytes], y[kStrBytes];
  n->a->s(n->a, f, x);
  n->b->s(n->b, f, y);
  return std::strcmp(x, y) == 0;
}
std::int64_t i_sne(const Node* n, Frame& f) {
  return !i_seq(n, f);
}
std::int64_t i_neg(const Node* n, Frame& f) {
  return s64(0 - u(n->a->i(n->a, f)));
}
std::int64_t i_lnot(const Node* n, Frame& f) {
  return !n->a->i(n->a, f);
}
std::int64_t i_bnot(const Node* n, Frame& f) {
  return ~n->a->i(n->a, f);
}

std::int64_t apply_binop(std::int64_t op, std::int64_t x, std::int64_t y) {
  switch (static_cast<BinaryOp>(op)) {
    case BinaryOp::add:
      return s64(u(x) + u(y));
    case BinaryOp::sub:
      return s64(u(x) - u(y));
    case BinaryOp::mul:
      return s64(u(x) * u(y));
    case BinaryOp::div:
      return y == 0 ? 0 : s64(u(x) / u(y));
    case BinaryOp::mod:
      return y == 0 ? 0 : s64(u(x) % u(y));
    case BinaryOp::band:
      return x & y;
    case BinaryOp::bor:
      return x | y;
    case BinaryOp::bxor:
      return x ^ y;
    case BinaryOp::shl:
      return s64(u(x) << (u(y) & 63));
    case BinaryOp::shr:
      return s64(u(x) >> (u(y) & 63));
    default:
      return y;
  }
}

// A left-deep chain of integer operators, folded left to right: keys[0] op[0] keys[1]
// op[1] ... (&& and || short-circuit as i_land/i_lor do). Chains of kFoldChain or more.
std::int64_t i_fold(const Node* n, Frame& f) {
  const Node* const* k = n->keys.data();
  std::int64_t acc = k[0]->i(k[0], f);
  const std::size_t count = n->keys.size();
  for (std::size_t j = 1; j < count; ++j) {
    const BinaryOp op = static_cast<BinaryOp>(n->ops[j - 1] & 0x7f);
    const bool is_unsigned = n->ops[j - 1] & 0x80;
    if (op == BinaryOp::land) {
      acc = acc && k[j]->i(k[j], f);
      continue;
    }
    if (op == BinaryOp::lor) {
      acc = acc || k[j]->i(k[j], f);
      continue;
    }
    const std::int64_t y = k[j]->i(k[j], f);
    switch (op) {
      case BinaryOp::lt:
        acc = is_unsigned ? u(acc) < u(y) : acc < y;
        break;
      case BinaryOp::le:
        acc = is_unsigned ? u(acc) <= u(y) : acc <= y;
        break;
      case BinaryOp::gt:
        acc = is_unsigned ? u(acc) > u(y) : acc > y;
        break;
      case BinaryOp::ge:
        acc = is_unsigned ? u(acc) >= u(y) : acc >= y;
        break;
      case BinaryOp::eq:
        acc = acc == y;
        break;
      case BinaryOp::ne:
        acc = acc != y;
        break;
      default:
        acc = apply_binop(static_cast<std::int64_t>(op), acc, y);
        break;
    }
  }
  return acc;
}
std::int64_t i_ternary(const Node* n, Frame& f) {
  return n->a->i(n->a, f) ? n->b->i(n->b, f) : n->c->i(n->c, f);
}
std::uint32_t s_ternary(const Node* n, Frame& f, char* out) {
  return n->a->i(n->a, f) ? n->b->s(n->b, f, out) : n->c->s(n->c, f, out);
}
std::uint32_t s_str(const Node* n, Frame& f, char* out) {
  const std::uint64_t addr = u(n->a->i(n->a, f));
  std::uint32_t max = kStrReadBytes;
  if (n->b) {
    const std::int64_t len = n->b->i(n->b, f);
    max = len <= 0 ? 0 : static_cast<std::uint32_t>(std::min<std::int64_t>(len, kStrReadBytes));
  }
  return read_user_string(addr, max, out);
}
// str() of a string (bpftrace allows it): the string, cut to the length if one is given.
std::uint32_t s_str_of_str(const Node* n, Frame& f, char* out) {
  std::uint32_t len = n->a->s(n->a, f, out);
  if (n->b) {
    const std::int64_t want = n->b->i(n->b, f);
    const std::uint32_t max =
        want <= 0 ? 0 : static_cast<std::uint32_t>(std::min<std::int64_t>(want, kStrReadBytes));
    const std::uint32_t keep = max == 0 ? 0 : std::min(len, max - 1);
    out[keep] = 0;
    len = keep;
  }
  return len;
}

// A read of `n` bytes at `addr` for this hit: from the hit's last block when it holds
// them, else by reading the block around them (or, where they cross a block's end or the
// block cannot be read, just them).
static bool frame_read(Frame& f, std::uint64_t addr, void* out, std::size_t n) {
  const std::uint64_t base = addr & ~std::uint64_t{kReadBlock - 1};
  const bool within = addr - base + n <= kReadBlock;
  if (within && f.block_addr == base && base != 0) {
    std::memcpy(out, f.block + (addr - base), n);
    return true;
  }
  if (within && base != 0) {
    if (read_user(base, f.block, kReadBlock)) {
      f.block_addr = base;
      std::memcpy(out, f.block + (addr - base), n);
      return true;
    }
    f.block_addr = 0;
  }
  return read_user(addr, out, n);
}

// C types. A cast to a narrower integer: truncate, then sign- or zero-extend (no call).
template <typename T>
std::int64_t i_cast(const Node* n, Frame& f) {
  return static_cast<std::int64_t>(static_cast<T>(n->a->i(n->a, f)));
}
// A read of memory at a + imm: fault-safe; 0 (and counted) where nothing is readable.
template <typename T>
std::int64_t i_load(const Node* n, Frame& f) {
  const std::uint64_t addr = u(n->a->i(n->a, f)) + u(n->imm);
  T v;
  if (!frame_read(f, addr, &v, sizeof v)) [[unlikely]] {
    f.rt->read_faults.fetch_add(1, std::memory_order_relaxed);
    return 0;
  }
  return static_cast<std::int64_t>(v);
}
// A bit field: the unit of key_words bytes at a + imm, shifted and masked.
std::int64_t i_load_bits(const Node* n, Frame& f) {
  const std::uint64_t addr = u(n->a->i(n->a, f)) + u(n->imm);
  std::uint64_t v = 0;
  if (!frame_read(f, addr, &v, n->key_words)) [[unlikely]] {
    f.rt->read_faults.fetch_add(1, std::memory_order_relaxed);
    return 0;
  }
  const unsigned w = n->bit_width;
  v >>= n->bit_offset;
  if (w < 64) v &= (std::uint64_t{1} << w) - 1;
  if (n->is_signed && w < 64 && (v >> (w - 1)) & 1) v |= ~std::uint64_t{0} << w;
  return s64(v);
}
// A char array at a + imm, read as a string of at most `map` bytes with its NUL.
std::uint32_t s_chars(const Node* n, Frame& f, char* out) {
  const std::uint64_t addr = u(n->a->i(n->a, f)) + u(n->imm);
  return read_user_string(addr, n->map, out);
}
// A copy wider than kStrBytes (run_records.cc): the same read, zeros to its record_span.
std::uint32_t s_bytes_wide(const Node* n, Frame& f, char* out) {
  const std::uint64_t addr = u(n->a->i(n->a, f)) + u(n->imm);
  std::memset(out + n->bytes, 0, record_span(n->bytes) - n->bytes);
  if (!frame_read(f, addr, out, n->bytes)) [[unlikely]] {
    f.rt->read_faults.fetch_add(1, std::memory_order_relaxed);
    std::memset(out, 0, n->bytes);
  }
  return n->bytes;
}
// An array or struct at a + imm copied whole: `bytes` bytes, zeros after them to kStrBytes.
std::uint32_t s_bytes(const Node* n, Frame& f, char* out) {
  const std::uint64_t addr = u(n->a->i(n->a, f)) + u(n->imm);
  std::memset(out + n->bytes, 0, kStrBytes - n->bytes);
  if (!frame_read(f, addr, out, n->bytes)) [[unlikely]] {
    f.rt->read_faults.fetch_add(1, std::memory_order_relaxed);
    std::memset(out, 0, n->bytes);
  }
  return n->bytes;
}

// Control flow.
bool run_block(const std::vector<SNode>& body, Frame& f) {
  for (const SNode& s : body)
    if (!s.fn(&s, f)) return false;
  return true;
}
bool st_if(const SNode* s, Frame& f) {
  return s->cond->i(s->cond, f) ? run_block(s->body, f) : run_block(s->else_body, f);
}
bool st_unroll(const SNode* s, Frame& f) {
  for (std::int64_t k = 0; k < s->count; ++k)
    if (!run_block(s->body, f)) return false;
  return true;
}
bool st_return(const SNode*, Frame&) {
  return false;
}

void on_hit(Hit& hit) {
  auto* p = static_cast<const ProbeCtx*>(hit.cookie);
  Runtime* rt = p->rt;
  if (rt->exited.load(std::memory_order_relaxed) || !rt->active.load(std::memory_order_relaxed))
    return;
  rt->run_probe(p->index, &hit);
}

// The instances the lowerer picks.
template std::int64_t i_arg<0>(const Node*, Frame&);
template std::int64_t i_arg<1>(const Node*, Frame&);
template std::int64_t i_arg<2>(const Node*, Frame&);
template std::int64_t i_arg<3>(const Node*, Frame&);
template std::int64_t i_arg<4>(const Node*, Frame&);
template std::int64_t i_arg<5>(const Node*, Frame&);
template std::int64_t i_cast<std::int8_t>(const Node*, Frame&);
template std::int64_t i_cast<std::uint8_t>(const Node*, Frame&);
template std::int64_t i_cast<std::int16_t>(const Node*, Frame&);
template std::int64_t i_cast<std::uint16_t>(const Node*, Frame&);
template std::int64_t i_cast<std::int32_t>(const Node*, Frame&);
template std::int64_t i_cast<std::uint32_t>(const Node*, Frame&);
template std::int64_t i_load<std::int8_t>(const Node*, Frame&);
template std::int64_t i_load<std::uint8_t>(const Node*, Frame&);
template std::int64_t i_load<std::int16_t>(const Node*, Frame&);
template std::int64_t i_load<std::uint16_t>(const Node*, Frame&);
template std::int64_t i_load<std::int32_t>(const Node*, Frame&);
template std::int64_t i_load<std::uint32_t>(const Node*, Frame&);
template std::int64_t i_load<std::uint64_t>(const Node*, Frame&);

}  // namespace nodes

void Runtime::run_probe(std::size_t index, Hit* hit) {
  const ProbeCtx& p = *probes[index];
  const ActionCode& a = *p.action;
  Frame f;
  f.hit = hit;
  f.rt = this;
  f.probe = &p;
  if (a.predicate && !a.predicate->i(a.predicate, f)) return;
  nodes::run_block(a.body, f);
}

}  // namespace hotprobe::script