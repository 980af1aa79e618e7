#include "script/run_nodes.h"

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
#include "script/run_stack.h"
#include "script/run_thread.h"

namespace hotprobe::script {
namespace nodes {

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

static std::uint32_t copy_str(char* out, std::string_view s) {
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
static std::int64_t apply_binop(std::int64_t op, std::int64_t x, std::int64_t y);

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

// Map keys.
// A ustack key part: [frames, pc, return addresses...] in n->key_words words, at most
// n->imm frames (run_stack.h); the words after the last frame are not read (maps.h,
// key_length) unless the part is not the key's last, so they are zeroed only then
// (n->is_signed).
[[gnu::noinline]] static void ustack_part(const Node* n, Frame& f, std::uint64_t* out) {
  if (!f.hit || !f.hit->regs) {
    std::memset(out, 0, n->key_words * sizeof *out);
    return;
  }
  const bool entry = f.probe && f.probe->probe.kind == Probe::Kind::uprobe &&
                     f.hit->probe_address && entry_instruction(f.hit->probe_address);
  capture_ustack(*f.hit->regs, entry, static_cast<std::uint32_t>(n->imm), out);
  if (n->is_signed) {
    const std::uint64_t used = 1 + out[0];
    std::memset(out + used, 0, (n->key_words - used) * sizeof *out);
  }
}
static inline void build_key(const Node* m, Frame& f, std::uint64_t* key) {
  std::uint32_t w = 0;
  const std::size_t n = m->keys.size();
  for (std::size_t k = 0; k < n; ++k) {
    const Node* e = m->keys[k];
    if (m->key_is_string[k]) {
      std::memset(&key[w], 0, kStrBytes);
      e->s(e, f, reinterpret_cast<char*>(&key[w]));
      w += kStrWords;
    } else if (!e->i) [[unlikely]] {  // a ustack part (no value): e->key_words words
      ustack_part(e, f, &key[w]);
      w += e->key_words;
    } else {
      key[w++] = u(e->i(e, f));
    }
  }
}
// The common case, one integer key (or none): no loop.
static inline void build_key_fast(const Node* m, Frame& f, std::uint64_t* key) {
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
static inline Shard& own_shard(const Node* map, Frame& f) {
  Shard& s = f.rt->maps->local()->shard(map->map);
  s.sync_if_stale();
  return s;
}
static inline std::uint64_t own_tid() {
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
static inline std::atomic<std::uint64_t>* agg_slot(const Node* n, Frame& f) {
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

static std::int64_t apply_binop(std::int64_t op, std::int64_t x, std::int64_t y) {
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

static std::string& out_buffer() {
  thread_local std::string buf;
  if (buf.capacity() < 4096) buf.reserve(4096);
  buf.clear();
  return buf;
}
static std::string& text_buffer() {
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
// The first `count` of n->keys (a tuple's elements, printf's values) evaluated into
// `args`, strings into `bufs`.
namespace {
void eval_args(const Node* n, std::size_t count, Frame& f, FmtArg* args, char (*bufs)[kStrBytes]) {
  for (std::size_t k = 0; k < count; ++k) {
    const Node* e = n->keys[k];
    if (e->s) {
      const std::uint32_t len = e->s(e, f, bufs[k]);
      args[k].s = std::string_view(bufs[k], len);
      args[k].is_string = true;
    } else {
      args[k].i = e->i(e, f);
    }
  }
}
void eval_tuple(const Node* n, Frame& f, FmtArg* args, char (*bufs)[kStrBytes]) {
  eval_args(n, n->keys.size(), f, args, bufs);
}
}  // namespace
std::int64_t i_tuple(const Node* n, Frame& f) {
  FmtArg args[ast::kMaxTupleElems];
  char bufs[ast::kMaxTupleElems][kStrBytes];
  eval_tuple(n, f, args, bufs);
  return 0;
}
std::int64_t i_print_tuple(const Node* n, Frame& f) {
  FmtArg args[ast::kMaxTupleElems];
  char bufs[ast::kMaxTupleElems][kStrBytes];
  eval_tuple(n->a, f, args, bufs);
  std::string& out = out_buffer();
  append_tuple(out, std::span<const FmtArg>(args, n->a->keys.size()), f.rt->format);
  f.rt->write(out);
  return 0;
}
// Every element is evaluated before any is stored: `$t = ($t.1, $t.0)` swaps.
bool st_var_tuple(const SNode* s, Frame& f) {
  FmtArg args[ast::kMaxTupleElems];
  char bufs[ast::kMaxTupleElems][kStrBytes];
  eval_tuple(s->value, f, args, bufs);
  for (std::size_t k = 0; k < s->target->keys.size(); ++k) {
    const std::int64_t slot = s->target->keys[k]->imm;
    if (args[k].is_string) {
      std::memcpy(f.sslots[slot], args[k].s.data(), args[k].s.size());
      f.sslots[slot][args[k].s.size()] = '\0';
    } else {
      f.islots[slot] = args[k].i;
    }
  }
  return true;
}
namespace {
constexpr std::uint32_t kMaxTupleWords = ast::kMaxTupleElems * kStrWords;
// The value of `@m[k] = tuple` in `words` (at most kMaxTupleWords).
void pack_tuple(const SNode* s, Frame& f, std::uint64_t* words) {
  const Node* t = s->value;
  std::uint32_t w = 0;
  for (const Node* e : t->keys) {
    if (e->s) {
      std::memset(words + w, 0, kStrBytes);
      e->s(e, f, reinterpret_cast<char*>(words + w));
      w += kStrWords;
    } else {
      words[w++] = u(e->i(e, f));
    }
  }
}
}  // namespace
bool st_map_tuple(const SNode* s, Frame& f) {
  std::uint64_t key[kMaxKeyWords + 1];
  key[0] = 0;
  std::uint64_t v[kMaxTupleWords];
  pack_tuple(s, f, v);
  build_key_fast(s->target, f, key);
  f.rt->maps->plain(s->target->map).set(key, v);
  return true;
}
bool st_tid_tuple(const SNode* s, Frame& f) {
  std::uint64_t v[kMaxTupleWords];
  pack_tuple(s, f, v);
  own_shard(s->target, f).plain_set(own_tid(), v);
  return true;
}
void format_call(const Node* n, Frame& f, std::string& text, bool escape) {
  constexpr std::size_t kMaxArgs = ast::kMaxPrintfArgs;  // the checker refuses more
  FmtArg args[kMaxArgs];
  char bufs[kMaxArgs][kStrBytes];
  const std::size_t nargs = std::min(n->keys.size(), kMaxArgs);
  eval_args(n, nargs, f, args, bufs);
  format_printf(text, n->format, std::span<const FmtArg>(args, nargs), escape);
}
std::int64_t i_printf(const Node* n, Frame& f) {
  std::string& text = text_buffer();
  format_call(n, f, text, f.rt->format == OutputFormat::text);
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
// strftime(fmt, ns): ns since boot (bpftrace 0.17's base: nsecs, which is
// CLOCK_MONOTONIC, is since boot too) as local time; %f is the microseconds.
std::uint32_t s_strftime(const Node* n, Frame& f, char* out) {
  const std::int64_t ns = n->a->i(n->a, f);
  timespec real, boot;
  clock_gettime(CLOCK_REALTIME, &real);
  clock_gettime(CLOCK_BOOTTIME, &boot);
  const std::int64_t wall =
      ns + (real.tv_sec - boot.tv_sec) * 1'000'000'000 + (real.tv_nsec - boot.tv_nsec);
  const time_t sec = static_cast<time_t>(wall / 1'000'000'000);
  char fmt[kStrBytes];
  std::size_t k = 0;
  for (std::size_t i = 0; i < n->text.size() && k + 7 < sizeof fmt; ++i) {
    if (n->text[i] == '%' && i + 1 < n->text.size() && n->text[i + 1] == 'f') {
      k += static_cast<std::size_t>(std::snprintf(fmt + k, sizeof fmt - k, "%06lld",
                                                  static_cast<long long>(wall / 1000 % 1000000)));
      ++i;
    } else {
      if (n->text[i] == '%' && i + 1 < n->text.size()) fmt[k++] = n->text[i++];
      fmt[k++] = n->text[i];
    }
  }
  fmt[k] = 0;
  tm t;
  localtime_r(&sec, &t);
  const std::size_t len = strftime(out, ast::kDefaultStrSize, fmt, &t);
  out[len] = 0;
  return static_cast<std::uint32_t>(len);
}
// join(argv [, sep]): the strings of a NULL-ended array of char*, at most kJoinEntries of
// kJoinEntryBytes each, joined by sep, as a line of output ("join" events in JSON).
std::int64_t i_join(const Node* n, Frame& f) {
  const std::uint64_t arr = u(n->a->i(n->a, f));
  std::string& text = text_buffer();
  const bool escape = f.rt->format == OutputFormat::text;
  for (std::uint32_t k = 0; k < ast::kJoinEntries; ++k) {
    std::uint64_t p = 0;
    if (!read_user(arr + 8 * k, &p, sizeof p) || p == 0) break;
    char s[ast::kJoinEntryBytes];
    const std::uint32_t len = read_user_string(p, sizeof s, s);
    if (k) text += n->text;
    if (escape)
      append_text_escaped(text, std::string_view(s, len));
    else
      text.append(s, len);
  }
  std::string& out = out_buffer();
  if (escape) {
    out += text;
    out += '\n';
  } else {
    append_message(out, "join", text, OutputFormat::json);
  }
  f.rt->write(out);
  return 0;
}
// buf(p, n): n bytes at p, printable ASCII as it is and every other byte as \xNN text
// (bpftrace's %r form); unreadable memory reads as zeros.
std::uint32_t s_buf(const Node* n, Frame& f, char* out) {
  const std::uint64_t p = u(n->a->i(n->a, f));
  unsigned char bytes[ast::kMaxBufBytes];
  const std::size_t len = std::min<std::size_t>(static_cast<std::size_t>(n->imm), sizeof bytes);
  if (len && !read_user(p, bytes, len)) f.rt->read_faults.fetch_add(1, std::memory_order_relaxed);
  std::uint32_t k = 0;
  for (std::size_t i = 0; i < len; ++i) {
    const unsigned char c = bytes[i];
    if (c >= 0x20 && c < 0x7f) {
      out[k++] = static_cast<char>(c);
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out[k++] = '\\';
      out[k++] = 'x';
      out[k++] = kHex[c >> 4];
      out[k++] = kHex[c & 15];
    }
  }
  out[k] = 0;
  return k;
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

void on_hit(Hit& hit) {
  auto* p = static_cast<const ProbeCtx*>(hit.cookie);
  Runtime* rt = p->rt;
  if (rt->exited.load(std::memory_order_relaxed) | !rt->active.load(std::memory_order_relaxed))
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
template bool st_minmax<false>(const SNode*, Frame&);
template bool st_minmax<true>(const SNode*, Frame&);

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
