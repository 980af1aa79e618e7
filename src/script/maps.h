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
// table split in stripes, each behind a small spin lock.
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

// Bytes of a string value or string key part, including the NUL (bpftrace's default).
inline constexpr std::uint32_t kStrBytes = 64;
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
  void zero_values();
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

// One thread's part of one aggregation map.
class Shard {
 public:
  explicit Shard(AggMap* map);

  // Applies the map's pending clear/zero/delete ops when the epoch moved (one relaxed
  // load when it did not).
  void sync_if_stale();
  // The value words of `key` in this shard, inserted zeroed if absent. Owner only.
  std::atomic<std::uint64_t>* find_or_insert(const std::uint64_t* key) {
    const std::uint64_t h = hash_key(key, table_.key_words());
    if (std::atomic<std::uint64_t>* v = table_.find(key, h)) [[likely]]
      return v;
    return insert_slow(key, h);
  }

 private:
  friend class AggMap;
  std::atomic<std::uint64_t>* insert_slow(const std::uint64_t* key, std::uint64_t hash);
  void sync_slow(std::uint64_t epoch);

  AggMap* map_;
  std::uint64_t seen_epoch_ = 0;  // written by the owner under mu_; read by the printer under mu_
  std::mutex mu_;                 // structure changes (owner) and walks (printer)
  Table table_;
};

class AggMap {
 public:
  explicit AggMap(MapDesc desc);
  const MapDesc& desc() const { return desc_; }

  // From any thread.
  void clear();
  void zero();
  void erase(const std::uint64_t* key);
  // Merged over every shard, in no particular order.
  std::vector<Row> snapshot();
  // The merged value of one key (a read of an aggregation in an expression): slow.
  std::vector<std::uint64_t> lookup(const std::uint64_t* key);

  Shard* new_shard();
  std::uint64_t epoch() const { return epoch_.load(std::memory_order_relaxed); }

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

// Every map of one program, and each thread's shards of its aggregation maps.
class MapSet {
 public:
  explicit MapSet(std::vector<MapDesc> descs);
  ~MapSet();
  MapSet(const MapSet&) = delete;
  MapSet& operator=(const MapSet&) = delete;

  struct ThreadShards {
    std::uint64_t set_id;
    std::vector<Shard*> shards;  // index: map id; null for plain maps
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
  AggMap& agg(std::size_t i) { return *agg_[i]; }
  PlainMap& plain(std::size_t i) { return *plain_[i]; }

  // clear/zero/print of any map kind.
  void clear(std::size_t i);
  void zero(std::size_t i);
  std::vector<Row> snapshot(std::size_t i);

 private:
  struct TlsCache {
    std::uint64_t set_id = 0;
    ThreadShards* shards = nullptr;
  };
  static thread_local TlsCache tls_cache_;
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
