// Script maps: per-thread aggregation shards merged when printed, and shared plain-value
// maps. The design and its memory-ordering argument: docs/design/script-runtime.md.
//
//   MapSet set({desc0, desc1});          // one per compiled program
//   Shard& s = set.local()->shard(0);    // the calling thread's shard of map 0
//   s.sync_if_stale();                   // apply clear()/zero()/delete() of other threads
//   std::atomic<std::uint64_t>* v = s.find_or_insert(key);
//   add_relaxed(v[0], 1);                // count(): no lock prefix, no fence
//   std::vector<Row> rows = set.agg(0).snapshot();   // printer: merged over every shard
//
// Aggregation maps (count sum avg min max stats hist lhist) are sharded per thread: a hit
// writes only its own thread's shard, and the common case (key present, no pending clear)
// is one relaxed load of the map's epoch, a probe of an open-addressing table and plain
// relaxed load/store pairs on the values. Only the owner changes a shard's structure
// (insert, grow, clear, zero, delete), under the shard's mutex, which the printer takes
// while it walks; values are relaxed atomics so the printer may read them while the owner
// adds. clear()/zero()/delete() from any thread append to the map's op log and bump its
// epoch; each owner applies the log on its next hit, and the printer applies the pending
// tail of the log to its copy of a stale shard (so a thread that never runs again still
// prints as cleared).
//
// Plain-value maps (`@m[k] = expr`, read back anywhere) have global semantics: a shared
// table split in stripes, each behind a small spin lock. Except a plain map whose every
// access in the program has the single key `tid` (MapDesc::per_thread, decided by the
// lowering): its entries are partitioned by thread by construction, so it is sharded like
// an aggregation (AggMap in plain mode): set/read/delete touch only the calling thread's
// shard (one extra "present" word per slot; delete clears it, so after the first set of a
// key the structure never changes on the hot path), and printing takes each key from the
// newest shard that holds it.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace hotprobe::script {

// Bytes of a string value or string key part, including the NUL. Room for the `probe`
// and `func` builtins with long paths (bpftrace keeps them whole); str() reads at most
// 64 bytes (eval.cc kStrReadBytes), bpftrace's default string length.
inline constexpr std::uint32_t kStrBytes = 128;
inline constexpr std::uint32_t kStrWords = kStrBytes / 8;
inline constexpr std::uint32_t kMaxKeyParts = 8;
inline constexpr std::uint32_t kMaxKeyWords = kMaxKeyParts * kStrWords;
inline constexpr std::uint32_t kHistBuckets = 65;  // <0, 0, 1, [2,4), ... [2^62, 2^63)

enum class ValueKind : std::uint8_t {
  count,
  sum,
  avg,
  min,
  max,
  stats,
  hist,
  lhist,
  integer,  // plain value
  string,   // plain value
};

constexpr bool is_aggregation(ValueKind k) {
  return k != ValueKind::integer && k != ValueKind::string;
}

struct MapDesc {
  std::string name;  // "@x"
  ValueKind kind = ValueKind::count;
  std::vector<bool> key_is_string;  // one per key part; empty: a map without keys
  std::int64_t lhist_min = 0, lhist_max = 0, lhist_step = 1;
  // A plain map keyed by `tid` alone everywhere: per-thread shards instead of stripes.
  bool per_thread = false;

  std::uint32_t key_words() const;      // an integer part is 1 word, a string part kStrWords
  std::uint32_t value_words() const;    // per kind (see value layout below)
  std::uint32_t lhist_buckets() const;  // (max - min) / step + 2 (below min, above max)
};
// Value layouts, in 64-bit words: count/sum/integer [v]; min/max [v, set]; avg/stats
// [count, total]; hist [65 buckets]; lhist [lhist_buckets()]; string [kStrWords bytes].

// One merged entry of a map.
struct Row {
  std::vector<std::uint64_t> key;
  std::vector<std::uint64_t> value;
};

// The hist() bucket of a value, as bpftrace 0.17 numbers them.
inline std::uint32_t hist_bucket(std::int64_t v) {
  if (v < 0) return 0;
  if (v == 0) return 1;
  return 2u + 63u - static_cast<std::uint32_t>(__builtin_clzll(static_cast<std::uint64_t>(v)));
}
inline std::uint32_t lhist_bucket(std::int64_t v, std::int64_t min, std::int64_t max,
                                  std::int64_t step, std::uint32_t buckets) {
  if (v < min) return 0;
  if (v >= max) return buckets - 1;
  return static_cast<std::uint32_t>((v - min) / step) + 1;
}

// The owner's read-modify-write of its own value word: not an atomic RMW (no lock prefix),
// only the owner writes it; relaxed so the printer may read it concurrently.
inline void add_relaxed(std::atomic<std::uint64_t>& w, std::uint64_t d) {
  w.store(w.load(std::memory_order_relaxed) + d, std::memory_order_relaxed);
}

inline std::uint64_t hash_key(const std::uint64_t* key, std::uint32_t words) {
  std::uint64_t h = 0x9e3779b97f4a7c15ull * (words + 1);
  for (std::uint32_t i = 0; i < words; ++i) {
    h ^= key[i];
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 32;
  }
  return h;
}

// Open addressing, linear probing. A slot is [state, key words..., value words...], every
// word a relaxed atomic (the printer reads them under the owner's lock, the owner without
// it). state: 0 empty, 1 used, 2 deleted.
class Table {
 public:
  Table(std::uint32_t key_words, std::uint32_t value_words);

  // Value words of the one key of a table without key words, or null.
  std::atomic<std::uint64_t>* find0(std::uint64_t hash) const {
    const std::size_t mask = capacity_ - 1;
    for (std::size_t i = hash & mask;; i = (i + 1) & mask) {
      std::atomic<std::uint64_t>* s = slot(i);
      const std::uint64_t state = s[0].load(std::memory_order_relaxed);
      if (state == 1) [[likely]]
        return s + 1;
      if (state == 0) return nullptr;
    }
  }
  // Value words of a one-word key, or null (the common case, unrolled).
  std::atomic<std::uint64_t>* find1(std::uint64_t key, std::uint64_t hash) const {
    const std::size_t mask = capacity_ - 1;
    for (std::size_t i = hash & mask;; i = (i + 1) & mask) {
      std::atomic<std::uint64_t>* s = slot(i);
      const std::uint64_t state = s[0].load(std::memory_order_relaxed);
      if (state == 1 && s[1].load(std::memory_order_relaxed) == key) [[likely]]
        return s + 2;
      if (state == 0) return nullptr;
    }
  }
  // Value words of `key`, or null.
  std::atomic<std::uint64_t>* find(const std::uint64_t* key, std::uint64_t hash) const {
    const std::size_t mask = capacity_ - 1;
    for (std::size_t i = hash & mask;; i = (i + 1) & mask) {
      std::atomic<std::uint64_t>* s = slot(i);
      const std::uint64_t state = s[0].load(std::memory_order_relaxed);
      if (state == 0) return nullptr;
      if (state == 1 && key_equal(s + 1, key)) return s + 1 + key_words_;
    }
  }
  // Inserts with zeroed values (the caller holds what protects the structure).
  std::atomic<std::uint64_t>* insert(const std::uint64_t* key, std::uint64_t hash);
  bool erase(const std::uint64_t* key, std::uint64_t hash);
  void clear();
  void zero_values(std::uint32_t words = ~0u);  // the first `words` value words of each slot
  std::size_t size() const { return used_; }

  template <typename F>  // f(const atomic* key, atomic* value)
  void for_each(F&& f) const {
    for (std::size_t i = 0; i < capacity_; ++i) {
      std::atomic<std::uint64_t>* s = slot(i);
      if (s[0].load(std::memory_order_relaxed) == 1) f(s + 1, s + 1 + key_words_);
    }
  }
  std::uint32_t key_words() const { return key_words_; }
  std::uint32_t value_words() const { return value_words_; }

 private:
  std::atomic<std::uint64_t>* slot(std::size_t i) const { return slots_.get() + i * stride_; }
  bool key_equal(const std::atomic<std::uint64_t>* a, const std::uint64_t* b) const {
    for (std::uint32_t w = 0; w < key_words_; ++w)
      if (a[w].load(std::memory_order_relaxed) != b[w]) return false;
    return true;
  }
  void grow();

  std::uint32_t key_words_, value_words_, stride_;
  std::size_t capacity_ = 0, used_ = 0, filled_ = 0;  // filled_: used + deleted
  std::unique_ptr<std::atomic<std::uint64_t>[]> slots_;
};

class AggMap;

// One thread's part of one aggregation map (or of a per-thread plain map).
class Shard {
 public:
  explicit Shard(AggMap* map);

  // Applies the map's pending clear/zero/delete ops when the epoch moved (one relaxed
  // load when it did not). Inline: it is on every hit.
  inline void sync_if_stale();
  // The value words of `key` in this shard, inserted zeroed if absent. Owner only.
  std::atomic<std::uint64_t>* find_or_insert(const std::uint64_t* key) {
    const std::uint64_t h = hash_key(key, table_.key_words());
    if (std::atomic<std::uint64_t>* v = table_.find(key, h)) [[likely]]
      return v;
    return insert_slow(key, h);
  }
  // The same for a map without keys (key_words() == 0): at most one slot, at a fixed hash.
  std::atomic<std::uint64_t>* find_or_insert0() {
    const std::uint64_t h = hash_key(nullptr, 0);
    if (std::atomic<std::uint64_t>* v = table_.find0(h)) [[likely]]
      return v;
    return insert_slow(nullptr, h);
  }
  // The same for a map with one integer key (key_words() == 1).
  std::atomic<std::uint64_t>* find_or_insert1(std::uint64_t key) {
    const std::uint64_t h = hash_key(&key, 1);
    if (std::atomic<std::uint64_t>* v = table_.find1(key, h)) [[likely]]
      return v;
    return insert_slow(&key, h);
  }

  // Per-thread plain maps (one integer key, the caller's tid; value words then a "present"
  // word). Owner only, after sync_if_stale(); no lock once the key has been inserted.
  // Copies the value into `out` (zeros when absent); false when absent.
  bool plain_get(std::uint64_t key, std::uint64_t* out) const {
    const std::uint32_t vw = plain_words_;
    const std::atomic<std::uint64_t>* v = table_.find1(key, hash_key(&key, 1));
    if (v && v[vw].load(std::memory_order_relaxed)) [[likely]] {
      for (std::uint32_t w = 0; w < vw; ++w)
        out[w] = v[w].load(std::memory_order_relaxed);
      return true;
    }
    for (std::uint32_t w = 0; w < vw; ++w)
      out[w] = 0;
    return false;
  }
  // An integer value, 0 when absent.
  std::uint64_t plain_get_int(std::uint64_t key) const {
    const std::atomic<std::uint64_t>* v = table_.find1(key, hash_key(&key, 1));
    return v && v[1].load(std::memory_order_relaxed) ? v[0].load(std::memory_order_relaxed) : 0;
  }
  void plain_set(std::uint64_t key, const std::uint64_t* value) {
    const std::uint32_t vw = plain_words_;
    std::atomic<std::uint64_t>* v = find_or_insert1(key);
    for (std::uint32_t w = 0; w < vw; ++w)
      v[w].store(value[w], std::memory_order_relaxed);
    v[vw].store(1, std::memory_order_relaxed);
  }
  void plain_set_int(std::uint64_t key, std::uint64_t value) {
    std::atomic<std::uint64_t>* v = find_or_insert1(key);
    v[0].store(value, std::memory_order_relaxed);
    v[1].store(1, std::memory_order_relaxed);
  }
  // Adds `d` to an integer value (absent: 0); returns the new value.
  std::uint64_t plain_add(std::uint64_t key, std::uint64_t d) {
    std::atomic<std::uint64_t>* v = find_or_insert1(key);
    const std::uint64_t old =
        v[1].load(std::memory_order_relaxed) ? v[0].load(std::memory_order_relaxed) : 0;
    v[0].store(old + d, std::memory_order_relaxed);
    v[1].store(1, std::memory_order_relaxed);
    return old + d;
  }
  // Marks the key absent (the slot stays, so a later set needs no insert).
  void plain_erase(std::uint64_t key) {
    if (std::atomic<std::uint64_t>* v = table_.find1(key, hash_key(&key, 1)))
      v[plain_words_].store(0, std::memory_order_relaxed);
  }

 private:
  friend class AggMap;
  std::atomic<std::uint64_t>* insert_slow(const std::uint64_t* key, std::uint64_t hash);
  void sync_slow(std::uint64_t epoch);

  AggMap* map_;
  const std::atomic<std::uint64_t>* epoch_;  // &map_->epoch_: one load less on a hit
  std::uint32_t plain_words_ = 0;  // per-thread plain maps: the value words before "present"
  std::uint64_t seen_epoch_ = 0;   // written by the owner under mu_; read by the printer under mu_
  std::mutex mu_;                  // structure changes (owner) and walks (printer)
  Table table_;
};

// An aggregation map, or (desc().per_thread) a plain map partitioned by thread: its slots
// carry one more value word, "present" (1 set, 0 deleted), and merging takes the value of
// the newest shard holding the key instead of adding.
class AggMap {
 public:
  explicit AggMap(MapDesc desc);
  const MapDesc& desc() const { return desc_; }
  bool plain() const { return desc_.per_thread; }
  // Value words of a shard's slot (value_words(), plus "present" in plain mode).
  std::uint32_t slot_value_words() const { return desc_.value_words() + (plain() ? 1 : 0); }

  // From any thread.
  void clear();
  void zero();
  void erase(const std::uint64_t* key);
  // Merged over every shard, in no particular order.
  std::vector<Row> snapshot();
  // Aggregations only: the merged value of one key (a read in an expression): slow.
  std::vector<std::uint64_t> lookup(const std::uint64_t* key);

  Shard* new_shard();
  std::uint64_t epoch() const { return epoch_.load(std::memory_order_relaxed); }
  const std::atomic<std::uint64_t>* epoch_word() const { return &epoch_; }

  // Merges `src` into `dst` (value words of this map's kind).
  void merge(std::uint64_t* dst, const std::atomic<std::uint64_t>* src) const;

 private:
  friend class Shard;
  enum class OpKind : std::uint8_t { clear, zero, erase };
  struct Op {
    std::uint64_t epoch;
    OpKind kind;
    std::vector<std::uint64_t> key;
  };
  void push_op(OpKind kind, const std::uint64_t* key);
  // Applies ops newer than `seen` to a table (owner) or to rows (printer's copy).
  void apply_ops(std::uint64_t seen, Table& table) const;
  void apply_ops(std::uint64_t seen, std::vector<Row>& rows) const;

  MapDesc desc_;
  std::atomic<std::uint64_t> epoch_{0};  // bumped (under ops_mu_) by every op
  // Lock order: ops_mu_ before any Shard::mu_.
  std::mutex ops_mu_;
  std::vector<Op> ops_;                         // since the last clear (older ops cannot matter)
  std::vector<std::unique_ptr<Shard>> shards_;  // guarded by ops_mu_; outlive their threads
};

// A tiny test-and-set lock for the plain maps' stripes.
class SpinLock {
 public:
  void lock() {
    while (flag_.exchange(true, std::memory_order_acquire))
      while (flag_.load(std::memory_order_relaxed))
        __builtin_ia32_pause();
  }
  void unlock() { flag_.store(false, std::memory_order_release); }

 private:
  std::atomic<bool> flag_{false};
};

// Plain-value maps: one table per stripe, each behind a SpinLock.
class PlainMap {
 public:
  explicit PlainMap(MapDesc desc);
  const MapDesc& desc() const { return desc_; }

  // Copies the value into `out` (value_words); false (and zeros) when absent.
  bool get(const std::uint64_t* key, std::uint64_t* out);
  void set(const std::uint64_t* key, const std::uint64_t* value);
  // Adds `d` to an integer value (absent: 0), returns the new value.
  std::int64_t add(const std::uint64_t* key, std::int64_t d);
  bool erase(const std::uint64_t* key);
  void clear();
  void zero();
  std::vector<Row> snapshot();

 private:
  static constexpr std::size_t kStripes = 16;
  struct alignas(64) Stripe {
    SpinLock lock;
    std::unique_ptr<Table> table;
  };
  Stripe& stripe(std::uint64_t h) { return stripes_[(h >> 59) & (kStripes - 1)]; }
  MapDesc desc_;
  Stripe stripes_[kStripes];
};

inline void Shard::sync_if_stale() {
  const std::uint64_t e = epoch_->load(std::memory_order_relaxed);  // the map's epoch_
  if (e != seen_epoch_) [[unlikely]]
    sync_slow(e);
}

// Every map of one program, and each thread's shards of its aggregation maps.
class MapSet {
 public:
  explicit MapSet(std::vector<MapDesc> descs);
  ~MapSet();
  MapSet(const MapSet&) = delete;
  MapSet& operator=(const MapSet&) = delete;

  struct ThreadShards {
    std::uint64_t set_id;
    std::vector<Shard*> shards;  // index: map id; null for striped plain maps
    Shard& shard(std::size_t map) const { return *shards[map]; }
  };
  // The calling thread's shards: one thread_local pointer compared with this set's id.
  ThreadShards* local() {
    if (tls_cache_.set_id == id_) [[likely]]
      return tls_cache_.shards;
    return local_slow();
  }

  std::size_t size() const { return descs_.size(); }
  const MapDesc& desc(std::size_t i) const { return descs_[i]; }
  bool is_agg(std::size_t i) const { return is_aggregation(descs_[i].kind); }
  // Sharded per thread: an aggregation, or a plain map with desc().per_thread.
  bool is_sharded(std::size_t i) const { return agg_[i] != nullptr; }
  AggMap& agg(std::size_t i) { return *agg_[i]; }        // is_sharded(i)
  PlainMap& plain(std::size_t i) { return *plain_[i]; }  // !is_sharded(i)

  // clear/zero/print of any map kind.
  void clear(std::size_t i);
  void zero(std::size_t i);
  std::vector<Row> snapshot(std::size_t i);

 private:
  struct TlsCache {
    std::uint64_t set_id = 0;
    ThreadShards* shards = nullptr;
  };
  // constinit: no TLS wrapper call; initial-exec: no __tls_get_addr in the agent's .so.
  static constinit thread_local TlsCache tls_cache_ __attribute__((tls_model("initial-exec")));
  ThreadShards* local_slow();

  std::uint64_t id_;  // unique in the process, never reused
  std::vector<MapDesc> descs_;
  std::vector<std::unique_ptr<AggMap>> agg_;
  std::vector<std::unique_ptr<PlainMap>> plain_;
  std::mutex threads_mu_;
  std::vector<std::pair<std::uint64_t, std::unique_ptr<ThreadShards>>> threads_;  // token
};

// Key and string helpers.
void put_string(std::uint64_t* words, std::string_view s);  // kStrWords words, NUL padded
std::string_view get_string(const std::uint64_t* words);

}  // namespace hotprobe::script
