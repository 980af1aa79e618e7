#include "script/maps.h"

#include <algorithm>
#include <cstring>
#include <map>

namespace hotprobe::script {

namespace {
// A printable copy of one entry (relaxed loads: owners may be writing).
Row row_of(const std::atomic<std::uint64_t>* k, std::uint32_t kw,
           const std::atomic<std::uint64_t>* v, std::uint32_t vw) {
  Row r;
  r.key.resize(kw);
  r.value.resize(vw);
  for (std::uint32_t w = 0; w < kw; ++w)
    r.key[w] = k[w].load(std::memory_order_relaxed);
  for (std::uint32_t w = 0; w < vw; ++w)
    r.value[w] = v[w].load(std::memory_order_relaxed);
  return r;
}
}  // namespace

std::uint32_t MapDesc::key_words() const {
  std::uint32_t n = 0;
  for (bool s : key_is_string)
    n += s ? kStrWords : 1;
  return n;
}

std::uint32_t MapDesc::lhist_buckets() const {
  if (lhist_step <= 0) return 2;
  return static_cast<std::uint32_t>((lhist_max - lhist_min) / lhist_step) + 2;
}

std::uint32_t MapDesc::value_words() const {
  switch (kind) {
    case ValueKind::count:
    case ValueKind::sum:
    case ValueKind::integer:
      return 1;
    case ValueKind::min:
    case ValueKind::max:
    case ValueKind::avg:
    case ValueKind::stats:
      return 2;
    case ValueKind::hist:
      return kHistBuckets;
    case ValueKind::lhist:
      return lhist_buckets();
    case ValueKind::string:
      return kStrWords;
  }
  return 1;
}

void put_string(std::uint64_t* words, std::string_view s) {
  std::memset(words, 0, kStrBytes);
  std::memcpy(words, s.data(), std::min<std::size_t>(s.size(), kStrBytes - 1));
}

std::string_view get_string(const std::uint64_t* words) {
  const char* p = reinterpret_cast<const char*>(words);
  return std::string_view(p, strnlen(p, kStrBytes - 1));
}

// ---------------------------------------------------------------------------------------
// Table

Table::Table(std::uint32_t key_words, std::uint32_t value_words)
    : key_words_(key_words),
      value_words_(value_words),
      stride_(1 + key_words + value_words),
      capacity_(8),
      slots_(new std::atomic<std::uint64_t>[8 * stride_]()) {}

std::atomic<std::uint64_t>* Table::insert(const std::uint64_t* key, std::uint64_t hash) {
  if ((filled_ + 1) * 2 > capacity_) grow();
  const std::size_t mask = capacity_ - 1;
  for (std::size_t i = hash & mask;; i = (i + 1) & mask) {
    std::atomic<std::uint64_t>* s = slot(i);
    const std::uint64_t state = s[0].load(std::memory_order_relaxed);
    if (state == 1) continue;
    // Empty, or deleted (a deleted slot ends no probe chain, so reusing it is safe only if
    // the key is not further on: callers insert only after find() failed).
    for (std::uint32_t w = 0; w < key_words_; ++w)
      s[1 + w].store(key[w], std::memory_order_relaxed);
    for (std::uint32_t w = 0; w < value_words_; ++w)
      s[1 + key_words_ + w].store(0, std::memory_order_relaxed);
    s[0].store(1, std::memory_order_relaxed);
    ++used_;
    if (state == 0) ++filled_;
    return s + 1 + key_words_;
  }
}

bool Table::erase(const std::uint64_t* key, std::uint64_t hash) {
  const std::size_t mask = capacity_ - 1;
  for (std::size_t i = hash & mask;; i = (i + 1) & mask) {
    std::atomic<std::uint64_t>* s = slot(i);
    const std::uint64_t state = s[0].load(std::memory_order_relaxed);
    if (state == 0) return false;
    if (state == 1 && key_equal(s + 1, key)) {
      s[0].store(2, std::memory_order_relaxed);
      --used_;
      return true;
    }
  }
}

void Table::clear() {
  for (std::size_t i = 0; i < capacity_ * stride_; ++i)
    slots_[i].store(0, std::memory_order_relaxed);
  used_ = filled_ = 0;
}

void Table::zero_values(std::uint32_t words) {
  words = std::min(words, value_words_);
  for_each([&](const std::atomic<std::uint64_t>*, std::atomic<std::uint64_t>* v) {
    for (std::uint32_t w = 0; w < words; ++w)
      v[w].store(0, std::memory_order_relaxed);
  });
}

void Table::grow() {
  std::size_t cap = capacity_;
  while (used_ * 4 + 4 > cap)
    cap *= 2;  // rehash into a table at most a quarter full
  std::unique_ptr<std::atomic<std::uint64_t>[]> old(std::move(slots_));
  const std::size_t old_cap = capacity_;
  slots_.reset(new std::atomic<std::uint64_t>[cap * stride_]());
  capacity_ = cap;
  used_ = filled_ = 0;
  std::uint64_t key[kMaxKeyWords];
  for (std::size_t i = 0; i < old_cap; ++i) {
    std::atomic<std::uint64_t>* s = old.get() + i * stride_;
    if (s[0].load(std::memory_order_relaxed) != 1) continue;
    for (std::uint32_t w = 0; w < key_words_; ++w)
      key[w] = s[1 + w].load(std::memory_order_relaxed);
    std::atomic<std::uint64_t>* v = insert(key, hash_key(key, key_words_));
    for (std::uint32_t w = 0; w < value_words_; ++w)
      v[w].store(s[1 + key_words_ + w].load(std::memory_order_relaxed), std::memory_order_relaxed);
  }
}

// ---------------------------------------------------------------------------------------
// Shard and AggMap

Shard::Shard(AggMap* map)
    : map_(map),
      epoch_(map->epoch_word()),
      plain_words_(map->desc().value_words()),
      table_(map->desc().key_words(), map->slot_value_words()) {}

void Shard::sync_slow(std::uint64_t) {
  std::scoped_lock lock(map_->ops_mu_, mu_);  // ops_mu_ first: the lock order
  map_->apply_ops(seen_epoch_, table_);
  seen_epoch_ = map_->epoch();
}

std::atomic<std::uint64_t>* Shard::insert_slow(const std::uint64_t* key, std::uint64_t hash) {
  std::lock_guard lock(mu_);
  return table_.insert(key, hash);
}

AggMap::AggMap(MapDesc desc) : desc_(std::move(desc)) {}

Shard* AggMap::new_shard() {
  std::lock_guard lock(ops_mu_);
  shards_.push_back(std::make_unique<Shard>(this));
  Shard* s = shards_.back().get();
  // A new shard starts empty, so no op before now concerns it.
  s->seen_epoch_ = epoch_.load(std::memory_order_relaxed);
  return s;
}

void AggMap::push_op(OpKind kind, const std::uint64_t* key) {
  std::lock_guard lock(ops_mu_);
  const std::uint64_t e = epoch_.load(std::memory_order_relaxed) + 1;
  if (kind == OpKind::clear) ops_.clear();  // a clear makes every older op moot
  Op op{e, kind, {}};
  if (key) op.key.assign(key, key + desc_.key_words());
  ops_.push_back(std::move(op));
  epoch_.store(e, std::memory_order_relaxed);
}

void AggMap::clear() {
  push_op(OpKind::clear, nullptr);
}
void AggMap::zero() {
  push_op(OpKind::zero, nullptr);
}
void AggMap::erase(const std::uint64_t* key) {
  push_op(OpKind::erase, key);
}

void AggMap::apply_ops(std::uint64_t seen, Table& table) const {
  // ops_ holds every op since the last clear; a shard older than that clear is cleared.
  if (!ops_.empty() && ops_.front().kind == OpKind::clear && ops_.front().epoch > seen)
    table.clear();
  for (const Op& op : ops_) {
    if (op.epoch <= seen) continue;
    switch (op.kind) {
      case OpKind::clear:
        table.clear();
        break;
      case OpKind::zero:
        table.zero_values(desc_.value_words());  // plain mode: "present" stays
        break;
      case OpKind::erase:
        table.erase(op.key.data(), hash_key(op.key.data(), table.key_words()));
        break;
    }
  }
}

void AggMap::apply_ops(std::uint64_t seen, std::vector<Row>& rows) const {
  for (const Op& op : ops_) {
    if (op.epoch <= seen) continue;
    switch (op.kind) {
      case OpKind::clear:
        rows.clear();
        break;
      case OpKind::zero:
        for (Row& r : rows)
          std::fill(r.value.begin(), r.value.end(), 0);
        break;
      case OpKind::erase:
        std::erase_if(rows, [&](const Row& r) { return r.key == op.key; });
        break;
    }
  }
}

void AggMap::merge(std::uint64_t* dst, const std::atomic<std::uint64_t>* src) const {
  auto ld = [&](std::uint32_t i) { return src[i].load(std::memory_order_relaxed); };
  switch (desc_.kind) {
    case ValueKind::min:
    case ValueKind::max: {
      if (!ld(1)) return;
      const auto v = static_cast<std::int64_t>(ld(0));
      const auto d = static_cast<std::int64_t>(dst[0]);
      const bool better = desc_.kind == ValueKind::min ? v < d : v > d;
      if (!dst[1] || better) dst[0] = static_cast<std::uint64_t>(v);
      dst[1] = 1;
      return;
    }
    default:
      for (std::uint32_t i = 0; i < desc_.value_words(); ++i)
        dst[i] += ld(i);
  }
}

std::vector<Row> AggMap::snapshot() {
  const std::uint32_t kw = desc_.key_words(), vw = desc_.value_words();
  const std::uint32_t sw = slot_value_words();
  std::map<std::vector<std::uint64_t>, std::vector<std::uint64_t>> merged;
  std::lock_guard ops_lock(ops_mu_);
  std::vector<Row> rows;
  std::vector<std::uint64_t> tmp(vw);
  std::vector<std::atomic<std::uint64_t>> tmpa(vw);
  for (auto& shard : shards_) {
    rows.clear();
    std::uint64_t seen;
    {
      std::lock_guard lock(shard->mu_);
      seen = shard->seen_epoch_;
      shard->table_.for_each(
          [&](const std::atomic<std::uint64_t>* k, const std::atomic<std::uint64_t>* v) {
            // Plain mode: a deleted key (present == 0) is not in the map.
            if (sw > vw && v[vw].load(std::memory_order_relaxed) == 0) return;
            rows.push_back(row_of(k, kw, v, vw));
          });
    }
    if (seen != epoch_.load(std::memory_order_relaxed)) {
      if (!ops_.empty() && ops_.front().kind == OpKind::clear && ops_.front().epoch > seen)
        rows.clear();
      apply_ops(seen, rows);
    }
    for (Row& r : rows) {
      auto [it, fresh] = merged.try_emplace(std::move(r.key), vw, 0);
      if (plain()) {
        // A key in two shards: a tid reused by a newer thread; shards are in creation
        // order, so the newer thread's value wins.
        it->second = std::move(r.value);
        continue;
      }
      (void)fresh;
      for (std::uint32_t w = 0; w < vw; ++w)
        tmpa[w].store(r.value[w], std::memory_order_relaxed);
      merge(it->second.data(), tmpa.data());
    }
  }
  std::vector<Row> out;
  out.reserve(merged.size());
  for (auto& [k, v] : merged)
    out.push_back(Row{k, v});
  return out;
}

std::vector<std::uint64_t> AggMap::lookup(const std::uint64_t* key) {
  std::vector<std::uint64_t> k(key, key + desc_.key_words());
  for (Row& r : snapshot())
    if (r.key == k) return std::move(r.value);
  return std::vector<std::uint64_t>(desc_.value_words(), 0);
}

// ---------------------------------------------------------------------------------------
// PlainMap

PlainMap::PlainMap(MapDesc desc) : desc_(std::move(desc)) {
  for (Stripe& s : stripes_)
    s.table = std::make_unique<Table>(desc_.key_words(), desc_.value_words());
}

bool PlainMap::get(const std::uint64_t* key, std::uint64_t* out) {
  const std::uint64_t h = hash_key(key, desc_.key_words());
  Stripe& s = stripe(h);
  std::lock_guard lock(s.lock);
  const std::uint32_t vw = desc_.value_words();
  if (std::atomic<std::uint64_t>* v = s.table->find(key, h)) {
    for (std::uint32_t w = 0; w < vw; ++w)
      out[w] = v[w].load(std::memory_order_relaxed);
    return true;
  }
  for (std::uint32_t w = 0; w < vw; ++w)
    out[w] = 0;
  return false;
}

void PlainMap::set(const std::uint64_t* key, const std::uint64_t* value) {
  const std::uint64_t h = hash_key(key, desc_.key_words());
  Stripe& s = stripe(h);
  std::lock_guard lock(s.lock);
  std::atomic<std::uint64_t>* v = s.table->find(key, h);
  if (!v) v = s.table->insert(key, h);
  for (std::uint32_t w = 0; w < desc_.value_words(); ++w)
    v[w].store(value[w], std::memory_order_relaxed);
}

std::int64_t PlainMap::add(const std::uint64_t* key, std::int64_t d) {
  const std::uint64_t h = hash_key(key, desc_.key_words());
  Stripe& s = stripe(h);
  std::lock_guard lock(s.lock);
  std::atomic<std::uint64_t>* v = s.table->find(key, h);
  if (!v) v = s.table->insert(key, h);
  const std::uint64_t n = v[0].load(std::memory_order_relaxed) + static_cast<std::uint64_t>(d);
  v[0].store(n, std::memory_order_relaxed);
  return static_cast<std::int64_t>(n);
}

bool PlainMap::erase(const std::uint64_t* key) {
  const std::uint64_t h = hash_key(key, desc_.key_words());
  Stripe& s = stripe(h);
  std::lock_guard lock(s.lock);
  return s.table->erase(key, h);
}

void PlainMap::clear() {
  for (Stripe& s : stripes_) {
    std::lock_guard lock(s.lock);
    s.table->clear();
  }
}

void PlainMap::zero() {
  for (Stripe& s : stripes_) {
    std::lock_guard lock(s.lock);
    s.table->zero_values();
  }
}

std::vector<Row> PlainMap::snapshot() {
  std::vector<Row> out;
  const std::uint32_t kw = desc_.key_words(), vw = desc_.value_words();
  for (Stripe& s : stripes_) {
    std::lock_guard lock(s.lock);
    s.table->for_each(
        [&](const std::atomic<std::uint64_t>* k, const std::atomic<std::uint64_t>* v) {
          out.push_back(row_of(k, kw, v, vw));
        });
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// MapSet

constinit thread_local MapSet::TlsCache MapSet::tls_cache_
    __attribute__((tls_model("initial-exec")));

namespace {
std::atomic<std::uint64_t> g_next_set_id{1};
std::atomic<std::uint64_t> g_next_thread_token{1};
thread_local std::uint64_t t_thread_token = 0;
}  // namespace

MapSet::MapSet(std::vector<MapDesc> descs)
    : id_(g_next_set_id.fetch_add(1, std::memory_order_relaxed)), descs_(std::move(descs)) {
  agg_.resize(descs_.size());
  plain_.resize(descs_.size());
  for (std::size_t i = 0; i < descs_.size(); ++i) {
    if (is_aggregation(descs_[i].kind) || descs_[i].per_thread)
      agg_[i] = std::make_unique<AggMap>(descs_[i]);
    else
      plain_[i] = std::make_unique<PlainMap>(descs_[i]);
  }
}

MapSet::~MapSet() {
  // A thread's cache may still name this set; ids are never reused, so it never matches
  // again. Clear it for the destroying thread anyway (cheap).
  if (tls_cache_.set_id == id_) tls_cache_ = {};
}

MapSet::ThreadShards* MapSet::local_slow() {
  if (t_thread_token == 0) t_thread_token = g_next_thread_token.fetch_add(1);
  std::lock_guard lock(threads_mu_);
  ThreadShards* ts = nullptr;
  for (auto& [token, shards] : threads_)
    if (token == t_thread_token) ts = shards.get();
  if (!ts) {
    auto owned = std::make_unique<ThreadShards>();
    owned->set_id = id_;
    owned->shards.resize(descs_.size(), nullptr);
    for (std::size_t i = 0; i < descs_.size(); ++i)
      if (agg_[i]) owned->shards[i] = agg_[i]->new_shard();
    ts = owned.get();
    threads_.emplace_back(t_thread_token, std::move(owned));
  }
  tls_cache_ = {id_, ts};
  return ts;
}

void MapSet::clear(std::size_t i) {
  if (agg_[i])
    agg_[i]->clear();
  else
    plain_[i]->clear();
}

void MapSet::zero(std::size_t i) {
  if (agg_[i])
    agg_[i]->zero();
  else
    plain_[i]->zero();
}

std::vector<Row> MapSet::snapshot(std::size_t i) {
  return agg_[i] ? agg_[i]->snapshot() : plain_[i]->snapshot();
}

}  // namespace hotprobe::script
