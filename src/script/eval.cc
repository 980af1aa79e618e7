#include "script/eval.h"

#include <pthread.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <mutex>

#include "hotprobe/symbols.h"
#include "script/run_clock.h"
#include "script/run_thread.h"

namespace hotprobe::script {

using ast::BinaryOp;
using ast::Builtin;
using ast::Expr;
using ast::Func;
using ast::Type;
using thread::g_gid;
using thread::g_uid;
using thread::ids;
using thread::ThreadIds;

// ---------------------------------------------------------------------------------------
// Node functions

namespace {

std::uint32_t copy_str(char* out, std::string_view s) {
  const std::size_t n = std::min<std::size_t>(s.size(), kStrBytes - 1);
  std::memcpy(out, s.data(), n);
  out[n] = 0;
  return static_cast<std::uint32_t>(n);
}

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
std::uint32_t matched_function(const ProbeCtx* p, std::uint64_t address, char* out) {
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

// Arithmetic: 64-bit two's complement; / and % unsigned (BPF's), 0 when dividing by zero;
// >> logical; comparisons signed (bpftrace 0.17).
std::uint64_t u(std::int64_t v) {
  return static_cast<std::uint64_t>(v);
}
std::int64_t s64(std::uint64_t v) {
  return static_cast<std::int64_t>(v);
}
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
std::int64_t apply_binop(std::int64_t op, std::int64_t x, std::int64_t y);

// A left-deep chain of integer operators, folded left to right: keys[0] op[0] keys[1]
// op[1] ... (&& and || short-circuit as i_land/i_lor do).
constexpr std::size_t kFoldChain = 8;  // shorter chains keep a node per operator
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
bool frame_read(Frame& f, std::uint64_t addr, void* out, std::size_t n) {
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

// Map keys.
inline void build_key(const Node* m, Frame& f, std::uint64_t* key) {
  std::uint32_t w = 0;
  const std::size_t n = m->keys.size();
  for (std::size_t k = 0; k < n; ++k) {
    const Node* e = m->keys[k];
    if (m->key_is_string[k]) {
      std::memset(&key[w], 0, kStrBytes);
      e->s(e, f, reinterpret_cast<char*>(&key[w]));
      w += kStrWords;
    } else {
      key[w++] = u(e->i(e, f));
    }
  }
}
// The common case, one integer key (or none): no loop.
inline void build_key_fast(const Node* m, Frame& f, std::uint64_t* key) {
  if (m->imm == 1) {
    const Node* e = m->keys[0];
    key[0] = u(e->i(e, f));
  } else if (m->imm == 2) {
    build_key(m, f, key);
  }
}

// Plain map reads.
std::int64_t i_map_read(const Node* n, Frame& f) {
  std::uint64_t key[kMaxKeyWords + 1];
  key[0] = 0;
  build_key_fast(n, f, key);
  std::uint64_t v[kStrWords];
  f.rt->maps->plain(n->map).get(key, v);
  return s64(v[0]);
}
std::uint32_t s_map_read(const Node* n, Frame& f, char* out) {
  std::uint64_t key[kMaxKeyWords + 1];
  key[0] = 0;
  build_key_fast(n, f, key);
  std::uint64_t v[kStrWords];
  f.rt->maps->plain(n->map).get(key, v);
  return copy_str(out, get_string(v));
}
// An aggregation read in an expression: merged over every shard (slow, rare).
std::int64_t i_agg_read(const Node* n, Frame& f) {
  std::uint64_t key[kMaxKeyWords + 1];
  key[0] = 0;
  build_key_fast(n, f, key);
  AggMap& m = f.rt->maps->agg(n->map);
  const std::vector<std::uint64_t> v = m.lookup(key);
  switch (m.desc().kind) {
    case ValueKind::count:
    case ValueKind::sum:
    case ValueKind::min:
    case ValueKind::max:
      return s64(v[0]);
    case ValueKind::avg:
      return v[0] ? s64(v[1]) / s64(v[0]) : 0;
    default:
      return 0;
  }
}

// Per-thread plain maps (MapDesc::per_thread): the key is the caller's tid by construction,
// so the value lives in the caller's own shard. No lock, no lock prefix, no fence.
inline Shard& own_shard(const Node* map, Frame& f) {
  Shard& s = f.rt->maps->local()->shard(map->map);
  s.sync_if_stale();
  return s;
}
inline std::uint64_t own_tid() {
  return u(ids().tid);
}
std::int64_t i_tid_read(const Node* n, Frame& f) {
  return s64(own_shard(n, f).plain_get_int(own_tid()));
}
std::uint32_t s_tid_read(const Node* n, Frame& f, char* out) {
  std::uint64_t v[kStrWords];
  own_shard(n, f).plain_get(own_tid(), v);
  return copy_str(out, get_string(v));
}

// Aggregations. Every one: key, this thread's shard, pending-op check, find, relaxed add.
inline std::atomic<std::uint64_t>* agg_slot(const Node* n, Frame& f) {
  if (n->imm == 0) {  // no key: one slot at a fixed place
    Shard& s = f.rt->maps->local()->shard(n->map);
    s.sync_if_stale();
    return s.find_or_insert0();
  }
  if (n->imm == 1) {  // one integer key: no key loop
    const std::uint64_t k = u(n->a->i(n->a, f));
    Shard& s = f.rt->maps->local()->shard(n->map);
    s.sync_if_stale();
    return s.find_or_insert1(k);
  }
  std::uint64_t key[kMaxKeyWords + 1];
  key[0] = 0;
  build_key_fast(n, f, key);
  Shard& s = f.rt->maps->local()->shard(n->map);
  s.sync_if_stale();
  return s.find_or_insert(key);
}
bool st_count(const SNode* s, Frame& f) {
  add_relaxed(*agg_slot(s->target, f), 1);
  return true;
}

bool st_sum(const SNode* s, Frame& f) {
  const std::int64_t v = s->value->i(s->value, f);
  add_relaxed(*agg_slot(s->target, f), u(v));
  return true;
}
bool st_avg(const SNode* s, Frame& f) {
  const std::int64_t v = s->value->i(s->value, f);
  std::atomic<std::uint64_t>* w = agg_slot(s->target, f);
  add_relaxed(w[0], 1);
  add_relaxed(w[1], u(v));
  return true;
}
template <bool kMin>
bool st_minmax(const SNode* s, Frame& f) {
  const std::int64_t v = s->value->i(s->value, f);
  std::atomic<std::uint64_t>* w = agg_slot(s->target, f);
  const std::int64_t cur = s64(w[0].load(std::memory_order_relaxed));
  const bool set = w[1].load(std::memory_order_relaxed) != 0;
  if (!set || (kMin ? v < cur : v > cur)) {
    w[0].store(u(v), std::memory_order_relaxed);
    if (!set) w[1].store(1, std::memory_order_relaxed);
  }
  return true;
}
bool st_hist(const SNode* s, Frame& f) {
  const std::int64_t v = s->value->i(s->value, f);
  std::atomic<std::uint64_t>* w = agg_slot(s->target, f);
  add_relaxed(w[hist_bucket(v)], 1);
  return true;
}
bool st_lhist(const SNode* s, Frame& f) {
  const std::int64_t v = s->value->i(s->value, f);
  const Node* n = s->value;  // the lhist call: min, max, step, buckets in keys' slots
  std::atomic<std::uint64_t>* w = agg_slot(s->target, f);
  add_relaxed(w[lhist_bucket(v, n->imm, s->count, s->op, n->map)], 1);
  return true;
}
std::int64_t i_value_of_call(const Node* n, Frame& f) {
  return n->a->i(n->a, f);
}

// Plain assignments.
bool st_var_int(const SNode* s, Frame& f) {
  f.islots[s->target->imm] = s->value->i(s->value, f);
  return true;
}
bool st_var_str(const SNode* s, Frame& f) {
  s->value->s(s->value, f, f.sslots[s->target->imm]);
  return true;
}
bool st_map_int(const SNode* s, Frame& f) {
  std::uint64_t key[kMaxKeyWords + 1];
  key[0] = 0;
  const std::int64_t v = s->value->i(s->value, f);
  build_key_fast(s->target, f, key);
  const std::uint64_t w = u(v);
  f.rt->maps->plain(s->target->map).set(key, &w);
  return true;
}
bool st_map_str(const SNode* s, Frame& f) {
  std::uint64_t key[kMaxKeyWords + 1];
  key[0] = 0;
  std::uint64_t v[kStrWords] = {0};
  s->value->s(s->value, f, reinterpret_cast<char*>(v));
  build_key_fast(s->target, f, key);
  f.rt->maps->plain(s->target->map).set(key, v);
  return true;
}
bool st_tid_int(const SNode* s, Frame& f) {
  const std::int64_t v = s->value->i(s->value, f);
  own_shard(s->target, f).plain_set_int(own_tid(), u(v));
  return true;
}
bool st_tid_str(const SNode* s, Frame& f) {
  std::uint64_t v[kStrWords] = {0};
  s->value->s(s->value, f, reinterpret_cast<char*>(v));
  own_shard(s->target, f).plain_set(own_tid(), v);
  return true;
}
bool st_expr(const SNode* s, Frame& f) {
  if (s->target->i)
    s->target->i(s->target, f);
  else if (s->target->s) {
    char tmp[kStrBytes];
    s->target->s(s->target, f, tmp);
  }
  return true;
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
bool st_var_compound(const SNode* s, Frame& f) {
  std::int64_t& slot = f.islots[s->target->imm];
  slot = apply_binop(s->op, slot, s->value->i(s->value, f));
  return true;
}
bool st_map_compound(const SNode* s, Frame& f) {
  std::uint64_t key[kMaxKeyWords + 1];
  key[0] = 0;
  const std::int64_t v = s->value->i(s->value, f);
  build_key_fast(s->target, f, key);
  PlainMap& m = f.rt->maps->plain(s->target->map);
  if (s->op == static_cast<std::int64_t>(BinaryOp::add)) {
    m.add(key, v);
  } else if (s->op == static_cast<std::int64_t>(BinaryOp::sub)) {
    m.add(key, s64(0 - u(v)));
  } else {
    std::uint64_t cur;
    m.get(key, &cur);
    const std::uint64_t n = u(apply_binop(s->op, s64(cur), v));
    m.set(key, &n);
  }
  return true;
}

// ++/-- (imm: +1 or -1; b non-null: prefix).
std::int64_t i_incdec_var(const Node* n, Frame& f) {
  std::int64_t& slot = f.islots[n->a->imm];
  const std::int64_t old = slot;
  slot = s64(u(old) + u(n->imm));
  return n->b ? slot : old;
}
bool st_tid_compound(const SNode* s, Frame& f) {
  const std::int64_t v = s->value->i(s->value, f);
  Shard& sh = own_shard(s->target, f);
  if (s->op == static_cast<std::int64_t>(BinaryOp::add)) {
    sh.plain_add(own_tid(), u(v));
  } else if (s->op == static_cast<std::int64_t>(BinaryOp::sub)) {
    sh.plain_add(own_tid(), 0 - u(v));
  } else {
    const std::int64_t cur = s64(sh.plain_get_int(own_tid()));
    sh.plain_set_int(own_tid(), u(apply_binop(s->op, cur, v)));
  }
  return true;
}
std::int64_t i_incdec_tid(const Node* n, Frame& f) {
  const std::int64_t now = s64(own_shard(n->a, f).plain_add(own_tid(), u(n->imm)));
  return n->b ? now : s64(u(now) - u(n->imm));
}
std::int64_t i_incdec_map(const Node* n, Frame& f) {
  std::uint64_t key[kMaxKeyWords + 1];
  key[0] = 0;
  build_key_fast(n->a, f, key);
  const std::int64_t now = f.rt->maps->plain(n->a->map).add(key, n->imm);
  return n->b ? now : s64(u(now) - u(n->imm));
}

// Calls.
std::int64_t i_delete(const Node* n, Frame& f) {
  std::uint64_t key[kMaxKeyWords + 1];
  key[0] = 0;
  build_key_fast(n->a, f, key);
  if (f.rt->maps->is_agg(n->a->map)) {
    f.rt->maps->agg(n->a->map).erase(key);
    // Apply it to this thread's shard now, so a read-back in this action sees it.
    f.rt->maps->local()->shard(n->a->map).sync_if_stale();
  } else {
    f.rt->maps->plain(n->a->map).erase(key);
  }
  return 0;
}
std::int64_t i_delete_tid(const Node* n, Frame& f) {
  own_shard(n->a, f).plain_erase(own_tid());
  return 0;
}
std::int64_t i_clear(const Node* n, Frame& f) {
  f.rt->maps->clear(n->a->map);
  return 0;
}
std::int64_t i_zero(const Node* n, Frame& f) {
  f.rt->maps->zero(n->a->map);
  return 0;
}

std::string& out_buffer() {
  thread_local std::string buf;
  if (buf.capacity() < 4096) buf.reserve(4096);
  buf.clear();
  return buf;
}
std::string& text_buffer() {
  thread_local std::string buf;
  if (buf.capacity() < 4096) buf.reserve(4096);
  buf.clear();
  return buf;
}

std::int64_t i_print_map(const Node* n, Frame& f) {
  Runtime* rt = f.rt;
  std::string s;
  const std::uint32_t map = n->a->map;
  append_map(s, rt->maps->desc(map), rt->maps->snapshot(map), rt->format,
             n->b ? static_cast<std::uint32_t>(n->b->i(n->b, f)) : 0,
             n->c ? static_cast<std::uint32_t>(n->c->i(n->c, f)) : 0);
  rt->write(s);
  return 0;
}
std::int64_t i_print_value(const Node* n, Frame& f) {
  FmtArg v;
  char buf[kStrBytes];
  if (n->a->s) {
    const std::uint32_t len = n->a->s(n->a, f, buf);
    v.s = std::string_view(buf, len);
    v.is_string = true;
  } else {
    v.i = n->a->i(n->a, f);
  }
  std::string& out = out_buffer();
  append_value(out, v, f.rt->format);
  f.rt->write(out);
  return 0;
}
std::int64_t i_printf(const Node* n, Frame& f) {
  constexpr std::size_t kMaxArgs = ast::kMaxPrintfArgs;  // the checker refuses more
  FmtArg args[kMaxArgs];
  char bufs[kMaxArgs][kStrBytes];
  const std::size_t nargs = std::min(n->keys.size(), kMaxArgs);
  for (std::size_t k = 0; k < nargs; ++k) {
    const Node* e = n->keys[k];
    if (e->s) {
      const std::uint32_t len = e->s(e, f, bufs[k]);
      args[k].s = std::string_view(bufs[k], len);
      args[k].is_string = true;
    } else {
      args[k].i = e->i(e, f);
    }
  }
  std::string& text = text_buffer();
  format_printf(text, n->format, std::span<const FmtArg>(args, nargs),
                f.rt->format == OutputFormat::text);
  if (f.rt->format == OutputFormat::text) {
    f.rt->write(text);
  } else {
    std::string& out = out_buffer();
    append_message(out, "printf", text, OutputFormat::json);
    f.rt->write(out);
  }
  return 0;
}
std::int64_t i_time(const Node* n, Frame& f) {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  tm t;
  localtime_r(&ts.tv_sec, &t);
  char buf[256];
  const std::size_t len = strftime(buf, sizeof buf, n->text.c_str(), &t);
  std::string& out = out_buffer();
  append_message(out, "time", std::string_view(buf, len), f.rt->format);
  f.rt->write(out);
  return 0;
}
std::int64_t i_exit(const Node*, Frame& f) {
  f.rt->exited.store(true, std::memory_order_relaxed);
  if (f.rt->sink) f.rt->sink->request_exit();
  return 0;
}
bool st_exit(const SNode* s, Frame& f) {
  i_exit(s->target, f);
  return false;
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

// ---------------------------------------------------------------------------------------
// Lowering

// A binary node whose right operand is a literal: its `_k` form, the literal in imm.
void use_literal_operand(Node* n) {
  static constexpr std::pair<IntFn, IntFn> kForms[] = {
      {i_add, i_add_k}, {i_sub, i_sub_k}, {i_mul, i_mul_k},   {i_div, i_div_k},   {i_ult, i_ult_k},
      {i_ule, i_ule_k}, {i_ugt, i_ugt_k}, {i_uge, i_uge_k},   {i_mod, i_mod_k},   {i_shl, i_shl_k},
      {i_shr, i_shr_k}, {i_lt, i_lt_k},   {i_le, i_le_k},     {i_gt, i_gt_k},     {i_ge, i_ge_k},
      {i_eq, i_eq_k},   {i_ne, i_ne_k},   {i_band, i_band_k}, {i_bxor, i_bxor_k}, {i_bor, i_bor_k}};
  for (const auto& [both, literal] : kForms) {
    if (n->i == both) {
      n->i = literal;
      n->imm = n->b->imm;
      return;
    }
  }
}

// Which plain maps are keyed by `tid` alone in every access of the program (MapDesc::
// per_thread): such a map is partitioned by thread by construction. An access without keys
// (print/clear/zero of the whole map) does not count against it.
class TidKeyScan {
 public:
  explicit TidKeyScan(const ast::Program& p) : only_tid_(p.maps.size(), true) {
    for (const ast::Action& a : p.actions) {
      if (a.predicate) expr(*a.predicate);
      stmts(a.body);
    }
  }
  bool only_tid(std::size_t map) const { return only_tid_[map]; }

 private:
  // With a work list, not a recursion: a chain a+b+c+... is as tall as it is long.
  void expr(const Expr& root) {
    std::vector<const Expr*> todo{&root};
    while (!todo.empty()) {
      const Expr& e = *todo.back();
      todo.pop_back();
      if (e.kind == Expr::Kind::map && e.map_id >= 0 &&
          static_cast<std::size_t>(e.map_id) < only_tid_.size() && !e.args.empty()) {
        const Expr& k = *e.args[0];
        if (e.args.size() != 1 || k.kind != Expr::Kind::builtin || k.builtin != Builtin::tid)
          only_tid_[e.map_id] = false;
      }
      for (const ast::ExprPtr& a : e.args)
        if (a) todo.push_back(a.get());
    }
  }
  void stmts(const std::vector<ast::Stmt>& body) {
    for (const ast::Stmt& st : body) {
      for (const ast::ExprPtr* e : {&st.expr, &st.target, &st.value, &st.cond})
        if (*e) expr(**e);
      stmts(st.body);
      stmts(st.else_body);
    }
  }
  std::vector<bool> only_tid_;
};

class Lowerer {
 public:
  Lowerer(Runtime& rt, const ast::Program& prog) : rt_(rt), prog_(prog) {}

  Result<const Node*> expr(const Expr& e);
  Result<void> stmts(const std::vector<ast::Stmt>& in, std::vector<SNode>& out);

 private:
  Node* make() {
    rt_.nodes.push_back(std::make_unique<Node>());
    return rt_.nodes.back().get();
  }
  Result<Node*> map_access(const Expr& e);
  Result<const Node*> call(const Expr& e);
  Result<const Node*> binary(const Expr& e);
  Result<const Node*> binary_node(const Expr& e, const Node* a, const Node* b);
  Result<const Node*> memory(const Expr& e);
  static bool unsigned_compare(const Expr& op) {
    return op.value == 1 && (op.binary == BinaryOp::lt || op.binary == BinaryOp::le ||
                             op.binary == BinaryOp::gt || op.binary == BinaryOp::ge);
  }
  // p + n, p - n: n scaled by the pointee's size (checker: Expr::value).
  const Node* scale(const Expr& op, const Node* b) {
    if (op.value <= 1 || (op.binary != BinaryOp::add && op.binary != BinaryOp::sub)) return b;
    if (b->i == i_const) {
      Node* k = make();
      k->i = i_const;
      k->imm = s64(u(b->imm) * u(op.value));
      return k;
    }
    Node* n = make();
    n->a = b;
    n->imm = op.value;
    n->i = i_mul_k;
    return n;
  }
  Result<void> assign(const ast::Stmt& s, SNode& out);
  static Error unsupported(const Expr& e, std::string_view what) {
    return Error(Errc::invalid_argument,
                 "line " + std::to_string(e.loc.line) + ": " + std::string(what) +
                     " is not supported by the evaluator; rewrite the script without it");
  }

  Runtime& rt_;
  const ast::Program& prog_;
};

Result<Node*> Lowerer::map_access(const Expr& e) {
  if (e.map_id < 0 || static_cast<std::size_t>(e.map_id) >= rt_.maps->size())
    return unsupported(e, "a map the checker did not resolve");
  Node* n = make();
  n->map = static_cast<std::uint32_t>(e.map_id);
  const MapDesc& d = rt_.maps->desc(n->map);
  if (!e.args.empty() && e.args.size() != d.key_is_string.size())
    return unsupported(e, "a map used with a different number of keys");
  for (std::size_t k = 0; k < e.args.size(); ++k) {
    auto key = expr(*e.args[k]);
    if (!key) return key.error();
    n->keys.push_back(*key);
    n->key_is_string.push_back(d.key_is_string[k]);
  }
  n->key_words = d.key_words();
  // imm: 0 no key, 1 one integer key (also in `a`), 2 anything else (the general loop).
  n->imm = n->keys.empty() ? 0 : (n->keys.size() == 1 && !n->key_is_string[0]) ? 1 : 2;
  if (n->imm == 1) n->a = n->keys[0];
  return n;
}

Result<const Node*> Lowerer::expr(const Expr& e) {
  using K = Expr::Kind;
  switch (e.kind) {
    case K::integer: {
      Node* n = make();
      n->i = i_const;
      n->imm = e.value;
      return n;
    }
    case K::string: {
      Node* n = make();
      n->s = s_const;
      n->text = e.text;
      return n;
    }
    case K::variable: {
      if (e.slot < 0 || e.slot >= kMaxSlots)
        return unsupported(e, "more than 32 $variables in one action");
      Node* n = make();
      n->imm = e.slot;
      if (e.type == Type::string)
        n->s = s_var;
      else
        n->i = i_var;
      return n;
    }
    case K::builtin: {
      Node* n = make();
      switch (e.builtin) {
        case Builtin::arg0:
          n->i = i_arg<0>;
          break;
        case Builtin::arg1:
          n->i = i_arg<1>;
          break;
        case Builtin::arg2:
          n->i = i_arg<2>;
          break;
        case Builtin::arg3:
          n->i = i_arg<3>;
          break;
        case Builtin::arg4:
          n->i = i_arg<4>;
          break;
        case Builtin::arg5:
          n->i = i_arg<5>;
          break;
        case Builtin::retval:
          n->i = i_retval;
          break;
        case Builtin::tid:
          n->i = i_tid;
          break;
        case Builtin::pid:
          n->i = i_pid;
          break;
        case Builtin::comm:
          n->s = s_comm;
          break;
        case Builtin::nsecs:
          n->i = i_nsecs;
          break;
        case Builtin::elapsed:
          n->i = i_elapsed;
          break;
        case Builtin::func:
          n->s = s_func;
          break;
        case Builtin::probe:
          n->s = s_probe;
          break;
        case Builtin::cpu:
          n->i = i_cpu;
          break;
        case Builtin::uid:
          n->i = i_uid;
          break;
        case Builtin::gid:
          n->i = i_gid;
          break;
      }
      return n;
    }
    case K::map: {
      auto m = map_access(e);
      if (!m) return m.error();
      Node* n = *m;
      const MapDesc& d = rt_.maps->desc(n->map);
      if (d.kind == ValueKind::string)
        n->s = d.per_thread ? s_tid_read : s_map_read;
      else if (d.kind == ValueKind::integer)
        n->i = d.per_thread ? i_tid_read : i_map_read;
      else
        n->i = i_agg_read;
      return n;
    }
    case K::unary: {
      auto a = expr(*e.args[0]);
      if (!a) return a.error();
      Node* n = make();
      n->a = *a;
      n->i = e.unary == ast::UnaryOp::neg ? i_neg : e.unary == ast::UnaryOp::lnot ? i_lnot : i_bnot;
      return n;
    }
    case K::binary:
      return binary(e);
    case K::ternary: {
      auto a = expr(*e.args[0]);
      if (!a) return a.error();
      auto b = expr(*e.args[1]);
      if (!b) return b.error();
      auto c = expr(*e.args[2]);
      if (!c) return c.error();
      Node* n = make();
      n->a = *a;
      n->b = *b;
      n->c = *c;
      if (e.type == Type::string)
        n->s = s_ternary;
      else
        n->i = i_ternary;
      return n;
    }
    case K::incdec: {
      const Expr& t = *e.args[0];
      Node* n = make();
      n->imm = e.increment ? 1 : -1;
      n->b = e.prefix ? n : nullptr;  // non-null marks prefix
      if (t.kind == K::variable) {
        auto v = expr(t);
        if (!v) return v.error();
        n->a = *v;
        n->i = i_incdec_var;
      } else {
        auto m = map_access(t);
        if (!m) return m.error();
        if (rt_.maps->desc((*m)->map).kind != ValueKind::integer)
          return unsupported(e, "++/-- on a map that does not hold an integer");
        n->a = *m;
        n->i = rt_.maps->desc((*m)->map).per_thread ? i_incdec_tid : i_incdec_map;
      }
      return n;
    }
    case K::call:
      return call(e);
    case K::cast: {
      auto a = expr(*e.args[0]);
      if (!a) return a.error();
      const ast::CType& c = prog_.types.at(e.cast_type);
      if (c.kind != ast::CType::Kind::integer || c.size == 8) return *a;  // same bits
      Node* n = make();
      n->a = *a;
      switch (static_cast<int>(c.size) * (c.is_signed ? -1 : 1)) {
        case 1:
          n->i = i_cast<std::uint8_t>;
          break;
        case -1:
          n->i = i_cast<std::int8_t>;
          break;
        case 2:
          n->i = i_cast<std::uint16_t>;
          break;
        case -2:
          n->i = i_cast<std::int16_t>;
          break;
        case 4:
          n->i = i_cast<std::uint32_t>;
          break;
        default:
          n->i = i_cast<std::int32_t>;
          break;
      }
      return n;
    }
    case K::deref:
    case K::field:
    case K::index:
      return memory(e);
    case K::sizeof_:
    case K::offsetof_:
      return unsupported(e, "sizeof/offsetof the checker did not fold");
  }
  return unsupported(e, "this expression");
}

// *p, p->f, s.f, p[i], a[i]: an address (a node and a constant offset), then by the
// expression's type: the address itself (an object), a string (a char array), or a load.
Result<const Node*> Lowerer::memory(const Expr& e) {
  const ast::TypeTable& T = prog_.types;
  auto base = expr(*e.args[0]);
  if (!base) return base.error();
  const Node* addr = *base;
  std::int64_t offset = 0;
  const ast::Field* bits = nullptr;
  if (e.kind == Expr::Kind::field) {
    int rec = e.args[0]->ctype;
    if (rec < 0) return unsupported(e, "a field of an untyped value");
    if (e.arrow) rec = T.at(rec).inner;
    std::uint32_t off = 0;
    const ast::Field* f = T.field(T.at(rec).record, e.name, off);
    if (!f) return unsupported(e, "an unknown field");
    offset = off;
    if (f->bit_width) bits = f;
  } else if (e.kind == Expr::Kind::index) {
    const int bt = e.args[0]->ctype;
    if (bt < 0) return unsupported(e, "indexing an untyped value");
    const std::int64_t elem = T.size_of(T.at(bt).inner);
    const Expr& ix = *e.args[1];
    if (ix.kind == Expr::Kind::integer) {
      offset = s64(u(ix.value) * u(elem));
    } else {
      auto i = expr(ix);
      if (!i) return i.error();
      Node* scaled = make();
      scaled->a = *i;
      scaled->imm = elem;
      scaled->i = i_mul_k;
      Node* sum = make();
      sum->a = addr;
      sum->b = scaled;
      sum->i = i_add;
      addr = sum;
    }
  }
  // A constant offset on an address that is itself base + constant: one addition.
  if (addr->i == i_add_k) {
    offset = s64(u(offset) + u(addr->imm));
    addr = addr->a;
  }
  Node* n = make();
  n->a = addr;
  n->imm = offset;
  if (e.type == Type::object) {
    n->i = i_add_k;
    return n;
  }
  const ast::CType& c = T.at(e.ctype);
  if (e.type == Type::string) {
    n->map = std::min<std::uint32_t>(c.count + 1, kStrReadBytes);
    n->s = s_chars;
    return n;
  }
  if (bits) {
    n->key_words = T.size_of(bits->type);
    n->bit_offset = static_cast<std::uint8_t>(bits->bit_offset);
    n->bit_width = static_cast<std::uint8_t>(bits->bit_width);
    n->is_signed = T.at(bits->type).is_signed;
    n->i = i_load_bits;
    return n;
  }
  const bool sign = c.kind == ast::CType::Kind::integer && c.is_signed;
  switch (c.size) {
    case 1:
      n->i = sign ? i_load<std::int8_t> : i_load<std::uint8_t>;
      break;
    case 2:
      n->i = sign ? i_load<std::int16_t> : i_load<std::uint16_t>;
      break;
    case 4:
      n->i = sign ? i_load<std::int32_t> : i_load<std::uint32_t>;
      break;
    default:
      n->i = i_load<std::uint64_t>;
      break;
  }
  return n;
}

// A chain a+b+c+... is a left-deep tree as tall as it is long (up to kMaxExprDepth): its
// left spine is lowered in a loop, and a long integer chain becomes one i_fold node, so
// neither lowering nor a hit's evaluation recurses once per operand.
Result<const Node*> Lowerer::binary(const Expr& e) {
  std::vector<const Expr*> spine;
  const Expr* base = &e;
  while (base->kind == Expr::Kind::binary) {
    spine.push_back(base);
    base = base->args[0].get();
  }
  std::reverse(spine.begin(), spine.end());  // bottom (first operator) first
  auto left = expr(*base);
  if (!left) return left.error();
  const Node* acc = *left;
  std::size_t k = 0;
  // The first operator may compare strings; every later one has an integer on its left.
  if (spine.size() >= kFoldChain && spine[0]->args[0]->type == Type::string) {
    auto b = expr(*spine[0]->args[1]);
    if (!b) return b.error();
    auto n = binary_node(*spine[0], acc, *b);
    if (!n) return n.error();
    acc = *n;
    k = 1;
  }
  if (spine.size() - k >= kFoldChain) {
    Node* fold = make();
    fold->keys.push_back(acc);
    for (; k < spine.size(); ++k) {
      auto b = expr(*spine[k]->args[1]);
      if (!b) return b.error();
      if (spine[k]->args[1]->type == Type::string)
        return unsupported(*spine[k], "this operator on strings");
      fold->keys.push_back(scale(*spine[k], *b));
      fold->ops.push_back(static_cast<std::uint8_t>(static_cast<unsigned>(spine[k]->binary) |
                                                    (unsigned_compare(*spine[k]) ? 0x80u : 0u)));
    }
    fold->i = i_fold;
    return fold;
  }
  for (; k < spine.size(); ++k) {
    auto b = expr(*spine[k]->args[1]);
    if (!b) return b.error();
    auto n = binary_node(*spine[k], acc, scale(*spine[k], *b));
    if (!n) return n.error();
    acc = *n;
  }
  return acc;
}

Result<const Node*> Lowerer::binary_node(const Expr& e, const Node* a, const Node* b) {
  Node* n = make();
  n->a = a;
  n->b = b;
  const bool strings = e.args[0]->type == Type::string;
  switch (e.binary) {
    case BinaryOp::mul:
      n->i = i_mul;
      break;
    case BinaryOp::div:
      n->i = i_div;
      break;
    case BinaryOp::mod:
      n->i = i_mod;
      break;
    case BinaryOp::add:
      n->i = i_add;
      break;
    case BinaryOp::sub:
      n->i = i_sub;
      break;
    case BinaryOp::shl:
      n->i = i_shl;
      break;
    case BinaryOp::shr:
      n->i = i_shr;
      break;
    case BinaryOp::lt:
      n->i = unsigned_compare(e) ? i_ult : i_lt;
      break;
    case BinaryOp::le:
      n->i = unsigned_compare(e) ? i_ule : i_le;
      break;
    case BinaryOp::gt:
      n->i = unsigned_compare(e) ? i_ugt : i_gt;
      break;
    case BinaryOp::ge:
      n->i = unsigned_compare(e) ? i_uge : i_ge;
      break;
    case BinaryOp::eq:
      n->i = strings ? i_seq : i_eq;
      break;
    case BinaryOp::ne:
      n->i = strings ? i_sne : i_ne;
      break;
    case BinaryOp::band:
      n->i = i_band;
      break;
    case BinaryOp::bxor:
      n->i = i_bxor;
      break;
    case BinaryOp::bor:
      n->i = i_bor;
      break;
    case BinaryOp::land:
      n->i = i_land;
      break;
    case BinaryOp::lor:
      n->i = i_lor;
      break;
  }
  if (strings && e.binary != BinaryOp::eq && e.binary != BinaryOp::ne)
    return unsupported(e, "this operator on strings");
  if (!strings && n->b->i == i_const) use_literal_operand(n);
  return n;
}

Result<const Node*> Lowerer::call(const Expr& e) {
  Node* n = make();
  switch (e.func) {
    case Func::del: {
      auto m = map_access(*e.args[0]);
      if (!m) return m.error();
      n->a = *m;
      n->i = rt_.maps->desc((*m)->map).per_thread ? i_delete_tid : i_delete;
      return n;
    }
    case Func::clear:
    case Func::zero: {
      auto m = map_access(*e.args[0]);
      if (!m) return m.error();
      n->a = *m;
      n->i = e.func == Func::clear ? i_clear : i_zero;
      return n;
    }
    case Func::print: {
      const Expr& a0 = *e.args[0];
      if (a0.kind == Expr::Kind::map && a0.args.empty()) {
        auto m = map_access(a0);
        if (!m) return m.error();
        n->a = *m;
        if (e.args.size() > 1) {
          auto t = expr(*e.args[1]);
          if (!t) return t.error();
          n->b = *t;
        }
        if (e.args.size() > 2) {
          auto d = expr(*e.args[2]);
          if (!d) return d.error();
          n->c = *d;
        }
        n->i = i_print_map;
        return n;
      }
      auto v = expr(a0);
      if (!v) return v.error();
      n->a = *v;
      n->i = i_print_value;
      return n;
    }
    case Func::printf: {
      for (std::size_t k = 1; k < e.args.size(); ++k) {
        auto a = expr(*e.args[k]);
        if (!a) return a.error();
        n->keys.push_back(*a);
      }
      for (const ast::FormatPiece& p : e.format) {
        FormatSpec f;
        f.text = p.text;
        f.conversion = p.conversion;
        f.left = p.left;
        f.plus = p.plus;
        f.space = p.space;
        f.alt = p.alt;
        f.zero = p.zero;
        f.width = p.width;
        f.precision = p.precision;
        using L = ast::FormatPiece::Length;
        f.length = p.length == L::none ? 0 : p.length == L::hh ? 1 : p.length == L::h ? 2 : 3;
        n->format.push_back(std::move(f));  // arguments are taken in order
      }
      n->i = i_printf;
      return n;
    }
    case Func::time:
      n->text = e.args.empty() ? "%H:%M:%S\n" : e.args[0]->text;
      n->i = i_time;
      return n;
    case Func::exit:
      n->i = i_exit;
      return n;
    case Func::str: {
      auto a = expr(*e.args[0]);
      if (!a) return a.error();
      n->a = *a;
      if (e.args.size() > 1) {
        auto l = expr(*e.args[1]);
        if (!l) return l.error();
        n->b = *l;
      }
      n->s = n->a->s ? s_str_of_str : s_str;  // a string argument has no integer form
      return n;
    }
    default:
      return unsupported(e, "an aggregation outside a map assignment");
  }
}

Result<void> Lowerer::assign(const ast::Stmt& st, SNode& out) {
  const Expr& t = *st.target;
  const Expr& v = *st.value;
  if (t.kind == Expr::Kind::variable) {
    auto tn = expr(t);
    if (!tn) return tn.error();
    auto vn = expr(v);
    if (!vn) return vn.error();
    out.target = *tn;
    out.value = *vn;
    if (st.assign.compound) {
      out.op = static_cast<std::int64_t>(st.assign.op);
      out.fn = st_var_compound;
    } else {
      out.fn = (*tn)->s ? st_var_str : st_var_int;
    }
    return {};
  }
  auto m = map_access(t);
  if (!m) return m.error();
  out.target = *m;
  const MapDesc& d = rt_.maps->desc((*m)->map);
  if (is_aggregation(d.kind)) {
    if (v.kind != Expr::Kind::call || !ast::is_aggregation(v.func))
      return unsupported(v, "assigning a non-aggregation to an aggregation map");
    if (v.func != Func::count) {
      auto a = expr(*v.args[0]);
      if (!a) return a.error();
      out.value = *a;
    }
    switch (v.func) {
      case Func::count:
        out.fn = st_count;
        break;
      case Func::sum:
        out.fn = st_sum;
        break;
      case Func::avg:
      case Func::stats:
        out.fn = st_avg;
        break;
      case Func::min:
        out.fn = st_minmax<true>;
        break;
      case Func::max:
        out.fn = st_minmax<false>;
        break;
      case Func::hist:
        out.fn = st_hist;
        break;
      case Func::lhist: {
        // The bucket parameters live in the statement: imm (min) on a wrapper node,
        // count (max), op (step), map (bucket count).
        Node* w = make();
        w->a = out.value;
        w->i = i_value_of_call;
        w->imm = d.lhist_min;
        w->key_words = 1;
        w->map = d.lhist_buckets();
        out.value = w;
        out.count = d.lhist_max;
        out.op = d.lhist_step;
        out.fn = st_lhist;
        break;
      }
      default:
        return unsupported(v, "this aggregation");
    }
    return {};
  }
  auto vn = expr(v);
  if (!vn) return vn.error();
  out.value = *vn;
  if (st.assign.compound) {
    if (d.kind != ValueKind::integer) return unsupported(v, "a compound assignment to a string");
    out.op = static_cast<std::int64_t>(st.assign.op);
    out.fn = d.per_thread ? st_tid_compound : st_map_compound;
  } else if (d.per_thread) {
    out.fn = d.kind == ValueKind::string ? st_tid_str : st_tid_int;
  } else {
    out.fn = d.kind == ValueKind::string ? st_map_str : st_map_int;
  }
  return {};
}

Result<void> Lowerer::stmts(const std::vector<ast::Stmt>& in, std::vector<SNode>& out) {
  for (const ast::Stmt& st : in) {
    SNode s;
    switch (st.kind) {
      case ast::Stmt::Kind::expr: {
        auto e = expr(*st.expr);
        if (!e) return e.error();
        s.target = *e;
        s.fn =
            (st.expr->kind == Expr::Kind::call && st.expr->func == Func::exit) ? st_exit : st_expr;
        break;
      }
      case ast::Stmt::Kind::assign: {
        auto r = assign(st, s);
        if (!r) return r.error();
        break;
      }
      case ast::Stmt::Kind::if_: {
        auto c = expr(*st.cond);
        if (!c) return c.error();
        s.cond = *c;
        if (auto r = stmts(st.body, s.body); !r) return r.error();
        if (auto r = stmts(st.else_body, s.else_body); !r) return r.error();
        s.fn = st_if;
        break;
      }
      case ast::Stmt::Kind::unroll:
        if (auto r = stmts(st.body, s.body); !r) return r.error();
        s.count = st.count;
        s.fn = st_unroll;
        break;
      case ast::Stmt::Kind::return_:
        s.fn = st_return;
        break;
    }
    out.push_back(std::move(s));
  }
  return {};
}

ValueKind value_kind(ast::MapKind k) {
  switch (k) {
    case ast::MapKind::count:
      return ValueKind::count;
    case ast::MapKind::sum:
      return ValueKind::sum;
    case ast::MapKind::avg:
      return ValueKind::avg;
    case ast::MapKind::min:
      return ValueKind::min;
    case ast::MapKind::max:
      return ValueKind::max;
    case ast::MapKind::stats:
      return ValueKind::stats;
    case ast::MapKind::hist:
      return ValueKind::hist;
    case ast::MapKind::lhist:
      return ValueKind::lhist;
    case ast::MapKind::string:
      return ValueKind::string;
    default:
      return ValueKind::integer;
  }
}

void on_hit(Hit& hit) {
  auto* p = static_cast<const ProbeCtx*>(hit.cookie);
  Runtime* rt = p->rt;
  if (rt->exited.load(std::memory_order_relaxed) | !rt->active.load(std::memory_order_relaxed))
    return;
  rt->run_probe(p->index, &hit);
}

}  // namespace

Result<std::unique_ptr<Runtime>> lower(ast::Program program, OutputFormat format) {
  clock::calibrate_once();
  thread::init_once();
  auto rt = std::make_unique<Runtime>();
  rt->format = format;
  rt->print_maps_on_exit = program.print_maps_on_exit;
  rt->start_ns = clock::now();
  std::vector<MapDesc> descs;
  const TidKeyScan tid_keys(program);
  for (const ast::MapInfo& m : program.maps) {
    MapDesc d;
    d.name = m.name;
    d.kind = value_kind(m.kind);
    for (ast::Type t : m.key_types)
      d.key_is_string.push_back(t == Type::string);
    d.per_thread = !is_aggregation(d.kind) && d.key_is_string.size() == 1 && !d.key_is_string[0] &&
                   tid_keys.only_tid(static_cast<std::size_t>(m.id));
    if (d.key_is_string.size() > kMaxKeyParts)
      return Error(Errc::invalid_argument,
                   "map " + m.name + " has more than 8 keys; use fewer key parts");
    d.lhist_min = m.lhist_min;
    d.lhist_max = m.lhist_max;
    d.lhist_step = m.lhist_step > 0 ? m.lhist_step : 1;
    descs.push_back(std::move(d));
  }
  rt->maps = std::make_unique<MapSet>(std::move(descs));
  Lowerer low(*rt, program);
  for (const ast::Action& a : program.actions) {
    auto code = std::make_unique<ActionCode>();
    if (a.num_slots > kMaxSlots)
      return Error(Errc::invalid_argument, "an action uses more than 32 $variables; use fewer");
    code->num_slots = a.num_slots;
    if (a.predicate) {
      auto p = low.expr(*a.predicate);
      if (!p) return p.error();
      code->predicate = *p;
    }
    if (auto r = low.stmts(a.body, code->body); !r) return r.error();
    for (const ast::AttachPoint& ap : a.probes) {
      auto ctx = std::make_unique<ProbeCtx>();
      ctx->rt = rt.get();
      ctx->index = rt->probes.size();
      ctx->probe = ap.probe;
      ctx->action = code.get();
      ctx->func = ap.function;
      ctx->glob = ap.is_glob;
      ctx->prefix =
          std::string(ap.probe.kind == Probe::Kind::uretprobe ? "uretprobe:" : "uprobe:") +
          ap.module + ":";
      rt->probe_list.push_back(ap.probe);
      rt->probes.push_back(std::move(ctx));
    }
    rt->actions.push_back(std::move(code));
  }
  return rt;
}

ProbeSpec Runtime::spec(std::size_t index) {
  ProbeCtx& p = *probes.at(index);
  ProbeSpec s;
  s.target = p.probe.target;
  s.cookie = &p;
  if (p.probe.kind == Probe::Kind::uretprobe)
    s.on_return = on_hit;
  else
    s.on_entry = on_hit;
  if (p.glob) {
    // Name every site the glob matches now, so func costs a lookup, not a symbolization.
    if (auto fns = resolve_functions(p.probe.target)) {
      std::lock_guard lock(p.func_mu);
      for (const FunctionInfo& fi : *fns)
        if (fi.address) p.funcs.emplace(fi.address + fi.offset, fi.name);
    }
  }
  return s;
}

void Runtime::run_probe(std::size_t index, Hit* hit) {
  const ProbeCtx& p = *probes[index];
  const ActionCode& a = *p.action;
  Frame f;
  f.hit = hit;
  f.rt = this;
  f.probe = &p;
  if (a.predicate && !a.predicate->i(a.predicate, f)) return;
  run_block(a.body, f);
}

std::string Runtime::print_maps() {
  std::string out;
  if (!print_maps_on_exit) return out;
  if (format == OutputFormat::text) out += "\n\n";  // bpftrace's main() prints these first
  // bpftrace 0.17 prints its maps in name order.
  std::vector<std::size_t> order(maps->size());
  for (std::size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](std::size_t x, std::size_t y) { return maps->desc(x).name < maps->desc(y).name; });
  for (std::size_t i : order)
    append_map(out, maps->desc(i), maps->snapshot(i), format);
  return out;
}

}  // namespace hotprobe::script
