// The maps' storage (maps.h): MapDesc's layout of keys and values, Table (the
// open-addressing hash table a map's entries live in), AggMap's per-thread shards and
// their merge, PlainMap. The layout is in this file with the tables so that their hot
// paths inline it. MapSet is in maps.cc, the shared region in maps_region.cc.
#include <algorithm>
#include <bit>
#include <cstring>
#include <map>
#include <utility>

#include "script/layout.h"
#include "script/maps.h"

namespace hotprobe::script {

std::uint32_t MapDesc::part_words(std::size_t k) const {
  switch (part(k)) {
    case KeyPart::string:
      return kStrWords;
    case KeyPart::record:
      return k < key_layouts.size() && key_layouts[k] ? record_span(key_layouts[k]->size) / 8
                                                      : kStrWords;
    case KeyPart::ustack:
    case KeyPart::ustack_perf:
      return 1 + stack_frames;
    default:
      return 1;
  }
}

std::uint32_t MapDesc::stack_tail() const {
  const std::size_t n = key_is_string.size();
  if (n == 0 || (part(n - 1) != KeyPart::ustack && part(n - 1) != KeyPart::ustack_perf))
    return kNoStackTail;
  return key_words() - part_words(n - 1);
}

bool MapDesc::has_symbols() const {
  for (std::size_t k = 0; k < key_is_string.size(); ++k)
    if (part(k) != KeyPart::integer && part(k) != KeyPart::string && part(k) != KeyPart::record)
      return true;
  return false;
}

std::uint32_t MapDesc::key_words() const {
  std::uint32_t n = 0;
  for (std::size_t k = 0; k < key_is_string.size(); ++k)
    n += part_words(k);
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
    case ValueKind::record:
      return value_layout ? record_span(value_layout->size) / 8 : kStrWords;
    case ValueKind::tuple: {
      std::uint32_t w = 0;
      for (bool s : value_is_string)
        w += s ? kStrWords : 1;
      return w;
    }
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

Table::Table(std::uint32_t key_words, std::uint32_t value_words, SharedRegion* region,
             std::atomic<std::uint64_t>* ref, bool adopt)
    : key_words_(key_words),
      value_words_(value_words),
      stride_(1 + key_words + value_words),
      region_(ref ? region : nullptr),
      ref_(region ? ref : nullptr) {
  if (adopt && ref_) {
    // hotprobe taking over a table the program left: as published (release), counted.
    const std::uint64_t w = ref_->load(std::memory_order_acquire);
    const std::uint64_t off = w & ((std::uint64_t{1} << region::kCapShift) - 1);
    const unsigned lg = static_cast<unsigned>(w >> region::kCapShift);
    if (off && lg >= 3 && lg < 40 &&
        region_->contains(off, (std::uint64_t{1} << lg) * stride_ * sizeof(std::uint64_t))) {
      slots_ = region_->at<std::atomic<std::uint64_t>>(off);
      capacity_ = std::size_t{1} << lg;
      on_heap_ = false;
      for (std::size_t i = 0; i < capacity_; ++i) {
        const std::uint64_t state = slot(i)[0].load(std::memory_order_acquire);
        used_ += state == 1;
        filled_ += state != 0;
      }
      return;
    }
  }
  capacity_ = 8;
  slots_ = allocate(capacity_, on_heap_);
  publish();
}

Table::~Table() {
  release(slots_, on_heap_);
}

std::atomic<std::uint64_t>* Table::allocate(std::size_t capacity, bool& on_heap) {
  const std::size_t words = capacity * stride_;
  if (ref_) {
    if (std::uint64_t off = region_->alloc(words * sizeof(std::uint64_t))) {
      on_heap = false;
      return region_->at<std::atomic<std::uint64_t>>(off);  // zeroed: fresh file pages
    }
  }
  on_heap = true;
  return new std::atomic<std::uint64_t>[words]();
}

void Table::release(std::atomic<std::uint64_t>* slots, bool on_heap) {
  // Region memory is never reused: a reader may still hold the old array's offset.
  if (on_heap) delete[] slots;
}

void Table::publish() {
  if (!ref_ || on_heap_) return;
  const auto lg = static_cast<std::uint64_t>(std::countr_zero(capacity_));
  ref_->store(region_->offset_of(slots_) | lg << region::kCapShift, std::memory_order_release);
}

std::atomic<std::uint64_t>* Table::insert(const std::uint64_t* key, std::uint64_t hash) {
  if ((filled_ + 1) * 2 > capacity_) grow();
  const std::size_t mask = capacity_ - 1;
  for (std::size_t i = hash & mask;; i = (i + 1) & mask) {
    std::atomic<std::uint64_t>* s = slot(i);
    const std::uint64_t state = s[0].load(std::memory_order_relaxed);
    if (state == 1) continue;
    // Empty, or deleted (a deleted slot ends no probe chain, so reusing it is safe only if
    // the key is not further on: callers insert only after find() failed).
    // A ustack tail past the last frame is stored as zeros (the caller's may be anything).
    const std::uint32_t len = key_length(key, key_words_, stack_tail_);
    for (std::uint32_t w = 0; w < key_words_; ++w)
      s[1 + w].store(w < len ? key[w] : 0, std::memory_order_relaxed);
    for (std::uint32_t w = 0; w < value_words_; ++w)
      s[1 + key_words_ + w].store(0, std::memory_order_relaxed);
    // Release: a reader in another process that sees the slot used sees its key.
    s[0].store(1, std::memory_order_release);
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
  std::atomic<std::uint64_t>* old = slots_;
  const bool old_on_heap = on_heap_;
  const std::size_t old_cap = capacity_;
  slots_ = allocate(cap, on_heap_);
  capacity_ = cap;
  used_ = filled_ = 0;
  std::uint64_t key[kMaxKeyWords];
  for (std::size_t i = 0; i < old_cap; ++i) {
    std::atomic<std::uint64_t>* s = old + i * stride_;
    if (s[0].load(std::memory_order_relaxed) != 1) continue;
    for (std::uint32_t w = 0; w < key_words_; ++w)
      key[w] = s[1 + w].load(std::memory_order_relaxed);
    std::atomic<std::uint64_t>* v = insert(key, hash(key));
    for (std::uint32_t w = 0; w < value_words_; ++w)
      v[w].store(s[1 + key_words_ + w].load(std::memory_order_relaxed), std::memory_order_relaxed);
  }
  publish();  // the full new array, then its offset (release)
  release(old, old_on_heap);
}

// ---------------------------------------------------------------------------------------
// Shard and AggMap

Shard::Shard(AggMap* map, region::ShardRecord* rec, bool adopt)
    : map_(map),
      epoch_(map->epoch_word()),
      rec_(rec),
      plain_words_(map->desc().value_words()),
      table_(map->desc().key_words(), map->slot_value_words(), rec ? map->region_ : nullptr,
             rec ? &rec->table : nullptr, adopt) {
  table_.set_stack_tail(map->desc().stack_tail());
  if (adopt && rec) seen_epoch_ = rec->seen_epoch.load(std::memory_order_acquire);
}

void Shard::sync_slow(std::uint64_t) {
  std::scoped_lock lock(map_->ops_mu_, mu_);  // ops_mu_ first: the lock order
  map_->apply_ops(seen_epoch_, table_);
  seen_epoch_ = map_->epoch();
  // After the table changes: a reader that sees this epoch sees them applied.
  if (rec_) rec_->seen_epoch.store(seen_epoch_, std::memory_order_release);
}

std::atomic<std::uint64_t>* Shard::insert_slow(const std::uint64_t* key, std::uint64_t hash) {
  std::lock_guard lock(mu_);
  return table_.insert(key, hash);
}

AggMap::AggMap(MapDesc desc) : desc_(std::move(desc)) {}

AggMap::AggMap(MapDesc desc, SharedRegion* region, region::MapRecord* rec, bool adopt)
    : desc_(std::move(desc)), epoch_p_(&rec->epoch), region_(region), rec_(rec) {
  if (!adopt) return;
  // hotprobe's reopen: the op log and the shards as the program left them. Offsets are
  // checked, and each list's offsets only grow (records are linked in allocation order),
  // so a program's wild write can neither crash hotprobe nor loop it.
  const std::uint32_t kw = desc_.key_words();
  const std::size_t op_bytes = sizeof(region::OpRecord) + kw * sizeof(std::uint64_t);
  std::uint64_t e = rec->epoch.load(std::memory_order_acquire);
  for (std::uint64_t off = rec->ops.load(std::memory_order_acquire);
       off && region->contains(off, op_bytes);) {
    auto* r = region->at<region::OpRecord>(off);
    if (r->kind > 2) break;
    Op op{r->epoch, static_cast<OpKind>(r->kind), {}};
    if (op.kind == OpKind::erase) op.key.assign(r->key, r->key + kw);
    e = std::max(e, op.epoch);
    ops_.push_back(std::move(op));
    last_op_ = r;
    const std::uint64_t next = r->next.load(std::memory_order_acquire);
    off = next > off ? next : 0;
  }
  // A process killed between linking an op and bumping the epoch: the op counts.
  rec->epoch.store(e, std::memory_order_relaxed);
  for (std::uint64_t off = rec->shards.load(std::memory_order_acquire);
       off && region->contains(off, sizeof(region::ShardRecord));) {
    auto* r = region->at<region::ShardRecord>(off);
    shards_.push_back(std::make_unique<Shard>(this, r, /*adopt=*/true));
    last_shard_ = r;
    const std::uint64_t next = r->next.load(std::memory_order_acquire);
    off = next > off ? next : 0;
  }
}

Shard* AggMap::new_shard() {
  std::lock_guard lock(ops_mu_);
  region::ShardRecord* rec = nullptr;
  if (region_) {
    if (std::uint64_t off = region_->alloc(sizeof(region::ShardRecord)))
      rec = region_->at<region::ShardRecord>(off);
  }
  shards_.push_back(std::make_unique<Shard>(this, rec));
  Shard* s = shards_.back().get();
  // A new shard starts empty, so no op before now concerns it.
  s->seen_epoch_ = epoch_p_->load(std::memory_order_relaxed);
  if (rec) {
    rec->seen_epoch.store(s->seen_epoch_, std::memory_order_relaxed);
    // Linked after its table is published: a reader that finds the record finds a table.
    const std::uint64_t off = region_->offset_of(rec);
    (last_shard_ ? last_shard_->next : rec_->shards).store(off, std::memory_order_release);
    last_shard_ = rec;
  }
  return s;
}

void AggMap::push_op(OpKind kind, const std::uint64_t* key) {
  std::lock_guard lock(ops_mu_);
  const std::uint64_t e = epoch_p_->load(std::memory_order_relaxed) + 1;
  if (kind == OpKind::clear) ops_.clear();  // a clear makes every older op moot
  Op op{e, kind, {}};
  if (key) {
    op.key.assign(desc_.key_words(), 0);  // a ustack tail as the tables hold it: zeros
    std::copy_n(key, key_length(key, desc_.key_words(), desc_.stack_tail()), op.key.begin());
  }
  ops_.push_back(std::move(op));
  mirror_op(ops_.back());
  epoch_p_->store(e, std::memory_order_release);
}

void AggMap::mirror_op(const Op& op) {
  if (!region_) return;
  const std::uint32_t kw = desc_.key_words();
  const std::uint64_t off = region_->alloc(sizeof(region::OpRecord) + kw * sizeof(std::uint64_t));
  if (!off) return;  // counted in the region's `refused`
  auto* r = region_->at<region::OpRecord>(off);
  r->epoch = op.epoch;
  r->kind = static_cast<std::uint64_t>(op.kind);
  for (std::uint32_t w = 0; w < op.key.size() && w < kw; ++w)
    r->key[w] = op.key[w];
  // A clear starts a new list (older ops are moot); others append. Release: a reader that
  // finds the record sees its fields.
  if (op.kind == OpKind::clear || !last_op_) {
    rec_->ops.store(off, std::memory_order_release);
  } else {
    last_op_->next.store(off, std::memory_order_release);
  }
  last_op_ = r;
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
        table.erase(op.key.data(), table.hash(op.key.data()));
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
    if (seen != epoch_p_->load(std::memory_order_relaxed)) {
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
  init(nullptr, nullptr, false);
}

PlainMap::PlainMap(MapDesc desc, SharedRegion* region, region::MapRecord* rec, bool adopt)
    : desc_(std::move(desc)) {
  init(region, rec, adopt);
}

void PlainMap::init(SharedRegion* region, region::MapRecord* rec, bool adopt) {
  std::atomic<std::uint64_t>* words = nullptr;  // one table word per stripe, in the region
  if (region && rec) {
    const std::size_t bytes = kStripes * sizeof(std::uint64_t);
    if (adopt) {
      const std::uint64_t off = rec->stripes.load(std::memory_order_acquire);
      if (region->contains(off, bytes)) words = region->at<std::atomic<std::uint64_t>>(off);
    } else if (const std::uint64_t off = region->alloc(bytes)) {
      words = region->at<std::atomic<std::uint64_t>>(off);
      rec->stripes.store(off, std::memory_order_release);
    }
  }
  for (std::size_t i = 0; i < kStripes; ++i) {
    stripes_[i].table =
        std::make_unique<Table>(desc_.key_words(), desc_.value_words(), words ? region : nullptr,
                                words ? words + i : nullptr, adopt);
  }
  for (Stripe& s : stripes_)
    s.table->set_stack_tail(desc_.stack_tail());
}

bool PlainMap::get(const std::uint64_t* key, std::uint64_t* out) {
  const std::uint64_t h = hash_key(key, desc_.key_words(), desc_.stack_tail());
  Stripe& s = stripe(h);
  std::lock_guard lock(s.lock);
  const std::uint32_t vw = desc_.value_words();
  return load_value(s.table->find(key, h), vw, out);
}

void PlainMap::set(const std::uint64_t* key, const std::uint64_t* value) {
  const std::uint64_t h = hash_key(key, desc_.key_words(), desc_.stack_tail());
  Stripe& s = stripe(h);
  std::lock_guard lock(s.lock);
  std::atomic<std::uint64_t>* v = s.table->find(key, h);
  if (!v) v = s.table->insert(key, h);
  for (std::uint32_t w = 0; w < desc_.value_words(); ++w)
    v[w].store(value[w], std::memory_order_relaxed);
}

std::int64_t PlainMap::add(const std::uint64_t* key, std::int64_t d) {
  const std::uint64_t h = hash_key(key, desc_.key_words(), desc_.stack_tail());
  Stripe& s = stripe(h);
  std::lock_guard lock(s.lock);
  std::atomic<std::uint64_t>* v = s.table->find(key, h);
  if (!v) v = s.table->insert(key, h);
  const std::uint64_t n = v[0].load(std::memory_order_relaxed) + static_cast<std::uint64_t>(d);
  v[0].store(n, std::memory_order_relaxed);
  return static_cast<std::int64_t>(n);
}

bool PlainMap::erase(const std::uint64_t* key) {
  const std::uint64_t h = hash_key(key, desc_.key_words(), desc_.stack_tail());
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

}  // namespace hotprobe::script
