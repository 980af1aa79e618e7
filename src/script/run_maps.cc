// The run pass's map nodes (run_nodes.h): keys, plain and per-thread reads and stores,
// aggregations, compound assignments, ++/--, delete, clear and zero.
#include <cstring>

#include "script/run_nodes.h"
#include "script/run_stack.h"
#include "script/run_thread.h"

namespace hotprobe::script {
namespace nodes {

using ast::BinaryOp;
using thread::ids;

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
std::uint32_t s_ustack_raw(const Node* n, Frame& f, char* out) {
  std::uint64_t words[1 + kMaxStackFrames];
  ustack_part(n, f, words);
  const std::uint64_t used = 1 + std::min<std::uint64_t>(words[0], u(n->imm));
  std::memcpy(out, words, used * 8);
  std::memset(out + used * 8, 0, n->bytes - used * 8);
  return n->bytes;
}
static inline void build_key(const Node* m, Frame& f, std::uint64_t* key) {
  std::uint32_t w = 0;
  const std::size_t n = m->keys.size();
  for (std::size_t k = 0; k < n; ++k) {
    const Node* e = m->keys[k];
    if (m->key_is_string[k]) {
      // A string or a copy: kStrWords words; a copy wider than kStrBytes its record_span.
      const std::uint32_t span = e->bytes > kStrBytes ? record_span(e->bytes) : kStrBytes;
      std::memset(&key[w], 0, span);
      e->s(e, f, reinterpret_cast<char*>(&key[w]));
      w += span / 8;
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
// The kStrWords words of a string or copy value (zeros when the key is absent).
static inline void read_words(const Node* n, Frame& f, std::uint64_t* v) {
  std::uint64_t key[kMaxKeyWords + 1];
  key[0] = 0;
  build_key_fast(n, f, key);
  f.rt->maps->plain(n->map).get(key, v);
}
std::uint32_t s_map_read(const Node* n, Frame& f, char* out) {
  std::uint64_t v[kStrWords];
  read_words(n, f, v);
  return copy_str(out, get_string(v));
}
std::uint32_t s_map_read_bytes(const Node* n, Frame& f, char* out) {
  std::uint64_t v[kStrWords];
  read_words(n, f, v);
  std::memcpy(out, v, kStrBytes);
  return n->bytes;
}
std::uint32_t s_map_read_wide(const Node* n, Frame& f, char* out) {
  std::uint64_t v[kMaxRecWords];
  read_words(n, f, v);
  std::memcpy(out, v, record_span(n->bytes));
  return n->bytes;
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
std::uint32_t s_tid_read_bytes(const Node* n, Frame& f, char* out) {
  std::uint64_t v[kStrWords];
  own_shard(n, f).plain_get(own_tid(), v);
  std::memcpy(out, v, kStrBytes);
  return n->bytes;
}
std::uint32_t s_tid_read_wide(const Node* n, Frame& f, char* out) {
  std::uint64_t v[kMaxRecWords];
  own_shard(n, f).plain_get(own_tid(), v);
  std::memcpy(out, v, record_span(n->bytes));
  return n->bytes;
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
// A copy wider than kStrBytes as a map's value (its record_span words).
bool st_map_wide(const SNode* s, Frame& f) {
  std::uint64_t key[kMaxKeyWords + 1];
  key[0] = 0;
  std::uint64_t v[kMaxRecWords];
  s->value->s(s->value, f, reinterpret_cast<char*>(v));
  build_key_fast(s->target, f, key);
  f.rt->maps->plain(s->target->map).set(key, v);
  return true;
}
bool st_tid_wide(const SNode* s, Frame& f) {
  std::uint64_t v[kMaxRecWords];
  s->value->s(s->value, f, reinterpret_cast<char*>(v));
  own_shard(s->target, f).plain_set(own_tid(), v);
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
  if (s->target->i) {
    s->target->i(s->target, f);
  } else if (s->target->s) {
    char tmp[kStrBytes];
    s->target->s(s->target, f, tmp);
  }
  return true;
}

bool st_expr_wide(const SNode* s, Frame& f) {
  char tmp[kMaxRecBytes];
  s->target->s(s->target, f, tmp);
  return true;
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
template <bool kTid>
static void tuple_value(const Node* n, Frame& f, std::uint64_t* v) {
  if constexpr (kTid) {
    own_shard(n->a, f).plain_get(own_tid(), v);
  } else {
    std::uint64_t key[kMaxKeyWords + 1];
    key[0] = 0;
    build_key_fast(n->a, f, key);
    f.rt->maps->plain(n->a->map).get(key, v);
  }
}
template <bool kTid>
static std::int64_t tuple_int(const Node* n, Frame& f) {
  std::uint64_t v[kMaxTupleWords];
  tuple_value<kTid>(n, f, v);
  return s64(v[n->imm]);
}
template <bool kTid>
static std::uint32_t tuple_str(const Node* n, Frame& f, char* out) {
  std::uint64_t v[kMaxTupleWords];
  tuple_value<kTid>(n, f, v);
  return copy_str(out, get_string(v + n->imm));
}
template <bool kTid>
static std::uint32_t tuple_bytes(const Node* n, Frame& f, char* out) {
  std::uint64_t v[kMaxTupleWords];
  tuple_value<kTid>(n, f, v);
  std::memcpy(out, v + n->imm, kStrBytes);
  return n->bytes;
}
std::int64_t i_map_tuple_int(const Node* n, Frame& f) {
  return tuple_int<false>(n, f);
}
std::uint32_t s_map_tuple_str(const Node* n, Frame& f, char* out) {
  return tuple_str<false>(n, f, out);
}
std::uint32_t s_map_tuple_bytes(const Node* n, Frame& f, char* out) {
  return tuple_bytes<false>(n, f, out);
}
std::int64_t i_tid_tuple_int(const Node* n, Frame& f) {
  return tuple_int<true>(n, f);
}
std::uint32_t s_tid_tuple_str(const Node* n, Frame& f, char* out) {
  return tuple_str<true>(n, f, out);
}
std::uint32_t s_tid_tuple_bytes(const Node* n, Frame& f, char* out) {
  return tuple_bytes<true>(n, f, out);
}
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

// The instances the lowerer picks.
template bool st_minmax<false>(const SNode*, Frame&);
template bool st_minmax<true>(const SNode*, Frame&);

}  // namespace nodes
}  // namespace hotprobe::script
