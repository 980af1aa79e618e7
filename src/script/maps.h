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
//
// Shared memory (SharedRegion): in `hotprobe run` every table, shard record, epoch and op
// of the maps lives in a memfd that hotprobe also maps, laid out by offsets, so hotprobe
// prints the maps whatever happened to the program (abort, SIGSEGV, exit_group, SIGKILL).
// `hotprobe attach` gives each session a region of its own the same way. Without a region
// (tests, HOTPROBE_SHARED_MAPS=0) the same structures live on the heap.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "script/value_kind.h"

namespace hotprobe::script {

class SharedRegion;
struct ValueLayout;

// Bytes of a string value or string key part, including the NUL. Room for the `probe`
// and `func` builtins with long paths (bpftrace keeps them whole); str() reads at most
// 64 bytes (eval.cc kStrReadBytes), bpftrace's default string length.
inline constexpr std::uint32_t kStrBytes = 128;
inline constexpr std::uint32_t kStrWords = kStrBytes / 8;
inline constexpr std::uint32_t kMaxKeyParts = 8;
// An array or struct copied whole (script/layout.h) has at most kMaxRecBytes. One of at
// most kStrBytes lives where a string lives; a wider one takes record_span(size) bytes:
// whole string slots of a $variable (consecutive), kStrWords-word steps of a map key part
// or value. docs/design/script-runtime.md, "Arrays and structs as values".
inline constexpr std::uint32_t kMaxRecBytes = 1024;
inline constexpr std::uint32_t kMaxRecWords = kMaxRecBytes / 8;
constexpr std::uint32_t record_span(std::uint32_t bytes) {
  return bytes <= kStrBytes ? kStrBytes : (bytes + kStrBytes - 1) / kStrBytes * kStrBytes;
}
// Frames a ustack key part keeps at most (ast::kUstackFrames): the part is [frames,
// address 0 .. address frames-1, zeros] in 1 + MapDesc::stack_frames words.
inline constexpr std::uint32_t kMaxStackFrames = 127;
inline constexpr std::uint32_t kMaxKeyWords = kMaxKeyParts * kStrWords + 1 + kMaxStackFrames;
inline constexpr std::uint32_t kHistBuckets = 65;  // <0, 0, 1, [2,4), ... [2^62, 2^63)

// Copies a map value of `words` words into `out`, or zeros when `v` is null; whether it
// was there.
inline bool load_value(const std::atomic<std::uint64_t>* v, std::uint32_t words,
                       std::uint64_t* out) {
  for (std::uint32_t w = 0; w < words; ++w)
    out[w] = v ? v[w].load(std::memory_order_relaxed) : 0;
  return v != nullptr;
}

// What a key part holds. The values are those of region::MapRecord::key_is_string.
enum class KeyPart : std::uint8_t {
  integer,
  string,
  ustack,       // return addresses, printed as bpftrace prints ustack
  ustack_perf,  // the same, printed as ustack(perf)
  usym,         // one address (a word), printed as the symbol holding it
  record,       // an array or struct copied whole (record_span words), printed by its layout
};

struct MapDesc {
  std::string name;  // "@x"
  ValueKind kind = ValueKind::count;
  std::vector<bool> key_is_string;  // one per key part; empty: a map without keys
  std::int64_t lhist_min = 0, lhist_max = 0, lhist_step = 1;
  // A plain map keyed by `tid` alone everywhere: per-thread shards instead of stripes.
  bool per_thread = false;
  std::vector<KeyPart> key_parts;     // one per key part; empty: as key_is_string says
  std::uint32_t stack_frames = 0;     // frames of its ustack parts (at most kMaxStackFrames)
  std::vector<bool> value_is_string;  // ValueKind::tuple: one per element
  // Arrays and structs as values (script/layout.h): the layout of a ValueKind::record
  // value, of each KeyPart::record key part (null for the others), of each tuple element
  // that is one (its words are a string's: value_is_string is true).
  std::shared_ptr<const ValueLayout> value_layout;
  std::vector<std::shared_ptr<const ValueLayout>> key_layouts;
  std::vector<std::shared_ptr<const ValueLayout>> elem_layouts;

  KeyPart part(std::size_t k) const {
    if (k < key_parts.size()) return key_parts[k];
    return key_is_string[k] ? KeyPart::string : KeyPart::integer;
  }
  // Words of part k: an integer or usym 1, a string kStrWords, a ustack 1 + stack_frames,
  // a copy record_span(its size) / 8.
  std::uint32_t part_words(std::size_t k) const;
  bool has_symbols() const;         // a part is printed through symbols (ustack, usym)
  std::uint32_t key_words() const;  // the sum of part_words
  // The word offset of a ustack part that ends the key, else kNoStackTail (key_length).
  std::uint32_t stack_tail() const;
  std::uint32_t value_words() const;    // per kind (see value layout below)
  std::uint32_t lhist_buckets() const;  // (max - min) / step + 2 (below min, above max)
};
// Value layouts, in 64-bit words: count/sum/integer [v]; min/max [v, set]; avg/stats
// [count, total]; hist [65 buckets]; lhist [lhist_buckets()]; string [kStrWords words];
// record [record_span(size) / 8 words];
// tuple: its elements in order, an integer one word, a string kStrWords.

// One merged entry of a map.
struct Row {
  std::vector<std::uint64_t> key;
  std::vector<std::uint64_t> value;
};

// The layout of the memory shared with hotprobe: offsets from the region's start, never
// pointers (hotprobe maps it at another address). docs/design/script-runtime.md, "Maps
// shared with hotprobe", gives who writes what and what a reader may see.
namespace region {
inline constexpr std::uint64_t kMagic = 0x31305350414d5048ull;  // "HPMAPS01"
inline constexpr std::uint32_t kVersion = 3;
inline constexpr std::size_t kAlign = 64;  // every allocation: no two owners share a line
// Header::phase: how far the agent's final report got.
inline constexpr std::uint32_t kTracing = 0;
inline constexpr std::uint32_t kEndDone = 1;      // END ran, its output is in the region
inline constexpr std::uint32_t kMapsPrinted = 2;  // the agent sent the maps itself

struct Header {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t map_count;
  std::uint64_t size;                  // bytes of the region
  std::atomic<std::uint64_t> top;      // bump allocator: the next free offset
  std::atomic<std::uint64_t> refused;  // allocations that did not fit
  std::uint64_t source_hash;           // the script's identity (source_hash())
  std::uint64_t maps_off;              // MapRecord[map_count]
  std::atomic<std::uint32_t> state;    // 1: magic .. maps laid out (release)
  std::atomic<std::uint32_t> phase;    // kTracing, kEndDone, kMapsPrinted
  std::uint32_t pid;                   // the process that laid the maps out
  std::uint64_t end_text_off;          // kEndDone: END's output, printed before the maps
  std::uint64_t end_text_len;
  // 1: the agent lost its channel (the program closed or reused its descriptor) and
  // stopped tracing then: the maps hold what was counted until that moment.
  std::atomic<std::uint32_t> channel_lost;
  // The traced program's /proc/self/maps when its maps have ustack or usym keys: the
  // offset of [uint64 length][text] (0: none), published with release after the text.
  // The agent writes it when it lays the maps out and again with END's output, so
  // hotprobe names the frames after the program is gone. The frames of the stack table
  // (ustack values) follow the text (run_stack.h).
  std::atomic<std::uint64_t> modules_off;
};
// A table's slots: offset | log2(capacity) << 48, published with release when filled.
inline constexpr unsigned kCapShift = 48;
struct MapRecord {
  std::uint64_t name_off;
  std::uint32_t name_len;
  std::uint8_t kind, per_thread, sharded, nkeys;
  std::uint8_t key_is_string[kMaxKeyParts];
  std::int64_t lhist_min, lhist_max, lhist_step;
  std::atomic<std::uint64_t> epoch;    // AggMap's epoch: the shards' hot path loads it here
  std::atomic<std::uint64_t> ops;      // first OpRecord since the last clear (0: none)
  std::atomic<std::uint64_t> shards;   // first ShardRecord, linked in creation order
  std::atomic<std::uint64_t> stripes;  // std::atomic<uint64_t>[16] table words (striped maps)
};
struct ShardRecord {
  std::atomic<std::uint64_t> next;
  std::atomic<std::uint64_t> seen_epoch;  // published after the ops up to it are applied
  std::atomic<std::uint64_t> table;
};
struct OpRecord {
  std::atomic<std::uint64_t> next;
  std::uint64_t epoch;
  std::uint64_t kind;    // 0 clear, 1 zero, 2 erase
  std::uint64_t key[1];  // key_words() words (erase)
};
}  // namespace region

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

// A key whose last part is a ustack ([frames, addresses..., zeros] at word `tail`) is
// hashed and compared up to its last frame: two keys with the same words up to there
// have the same frame count, so the same zero tail. kNoStackTail: every word.
inline constexpr std::uint32_t kNoStackTail = ~0u;
inline std::uint32_t key_length(const std::uint64_t* key, std::uint32_t words, std::uint32_t tail) {
  if (tail == kNoStackTail) return words;
  return tail + 1 +
         static_cast<std::uint32_t>(std::min<std::uint64_t>(key[tail], words - tail - 1));
}
inline std::uint64_t hash_key(const std::uint64_t* key, std::uint32_t words, std::uint32_t tail) {
  return hash_key(key, key_length(key, words, tail));
}

// Open addressing, linear probing. A slot is [state, key words..., value words...], every
// word a relaxed atomic (the printer reads them under the owner's lock, the owner without
// it). state: 0 empty, 1 used, 2 deleted.
class Table {
 public:
  // `region`/`ref` (both or neither): the slots are allocated in the shared region and
  // each new slot array is published in *ref; when the region is full (or no longer
  // shared, in a fork child) they fall back to the heap and the region keeps the last
  // published array. `adopt`: wrap the array *ref already names (hotprobe's reopen).
  Table(std::uint32_t key_words, std::uint32_t value_words, SharedRegion* region = nullptr,
        std::atomic<std::uint64_t>* ref = nullptr, bool adopt = false);
  ~Table();
  Table(const Table&) = delete;
  Table& operator=(const Table&) = delete;

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
  // Keys end with a ustack part at word `tail` (key_length): hash() and the comparisons
  // stop at its last frame. Set before the first insert.
  void set_stack_tail(std::uint32_t tail) { stack_tail_ = tail; }
  std::uint64_t hash(const std::uint64_t* key) const {
    return hash_key(key, key_words_, stack_tail_);
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
  std::atomic<std::uint64_t>* slot(std::size_t i) const { return slots_ + i * stride_; }
  bool key_equal(const std::atomic<std::uint64_t>* a, const std::uint64_t* b) const {
    const std::uint32_t n = key_length(b, key_words_, stack_tail_);
    for (std::uint32_t w = 0; w < n; ++w)
      if (a[w].load(std::memory_order_relaxed) != b[w]) return false;
    return true;
  }
  void grow();
  // A zeroed slot array of `capacity` slots: in the region when it has room, else the heap.
  std::atomic<std::uint64_t>* allocate(std::size_t capacity, bool& on_heap);
  void publish();  // the slot array's offset and capacity into *ref_ (region arrays only)
  void release(std::atomic<std::uint64_t>* slots, bool on_heap);

  std::uint32_t key_words_, value_words_, stride_;
  std::uint32_t stack_tail_ = kNoStackTail;
  std::size_t capacity_ = 0, used_ = 0, filled_ = 0;  // filled_: used + deleted
  std::atomic<std::uint64_t>* slots_ = nullptr;
  bool on_heap_ = true;
  SharedRegion* region_ = nullptr;
  std::atomic<std::uint64_t>* ref_ = nullptr;  // in the region
};

class AggMap;

// One thread's part of one aggregation map (or of a per-thread plain map).
class Shard {
 public:
  // `rec`: the shard's record in the map's region (null: none). `adopt`: a shard another
  // process left there (hotprobe's reopen): its table and seen epoch are taken as found.
  explicit Shard(AggMap* map, region::ShardRecord* rec = nullptr, bool adopt = false);

  // Applies the map's pending clear/zero/delete ops when the epoch moved (one relaxed
  // load when it did not). Inline: it is on every hit.
  inline void sync_if_stale();
  // The value words of `key` in this shard, inserted zeroed if absent. Owner only.
  std::atomic<std::uint64_t>* find_or_insert(const std::uint64_t* key) {
    const std::uint64_t h = table_.hash(key);
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
    if (v && v[vw].load(std::memory_order_relaxed)) [[likely]]
      return load_value(v, vw, out);
    return load_value(nullptr, vw, out);
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
  const std::atomic<std::uint64_t>* epoch_;  // the map's epoch word: one load less on a hit
  region::ShardRecord* rec_ = nullptr;       // seen_epoch_ is mirrored there
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
  // Shards, epoch and op log kept in `rec` of `region`; `adopt`: take over the shards and
  // ops another process left there (hotprobe printing a program's maps after its end).
  AggMap(MapDesc desc, SharedRegion* region, region::MapRecord* rec, bool adopt);
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
  std::uint64_t epoch() const { return epoch_p_->load(std::memory_order_relaxed); }
  const std::atomic<std::uint64_t>* epoch_word() const { return epoch_p_; }

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

  void mirror_op(const Op& op);  // appends it to the region's op list

  MapDesc desc_;
  std::atomic<std::uint64_t> epoch_{0};            // bumped (under ops_mu_) by every op
  std::atomic<std::uint64_t>* epoch_p_ = &epoch_;  // or the region's MapRecord::epoch
  SharedRegion* region_ = nullptr;
  region::MapRecord* rec_ = nullptr;
  region::OpRecord* last_op_ = nullptr;        // the region's list tail (under ops_mu_)
  region::ShardRecord* last_shard_ = nullptr;  // likewise
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
  // Stripes' tables in `rec` of `region` (adopt: as another process left them).
  PlainMap(MapDesc desc, SharedRegion* region, region::MapRecord* rec, bool adopt);
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
  void init(SharedRegion* region, region::MapRecord* rec, bool adopt);
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
  // Takes the region SharedRegion::use_next() named, if any (Program::compile builds the
  // MapSet: that is how the agent's and hotprobe's programs reach their region).
  explicit MapSet(std::vector<MapDesc> descs);
  // Lays the maps out in `region` (create), or takes over the maps found there (reopen;
  // on a mismatch the maps are the set's own and SharedRegion::reopen_error() says why).
  MapSet(std::vector<MapDesc> descs, SharedRegion* region, bool reopen,
         std::uint64_t source_hash = 0);
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

  void build(SharedRegion* region, bool reopen, std::uint64_t source_hash);

  std::uint64_t id_;  // unique in the process, never reused
  std::vector<MapDesc> descs_;
  std::vector<std::unique_ptr<AggMap>> agg_;
  std::vector<std::unique_ptr<PlainMap>> plain_;
  std::mutex threads_mu_;
  std::vector<std::pair<std::uint64_t, std::unique_ptr<ThreadShards>>> threads_;  // token
};

// The memory the maps share with hotprobe: a memfd, sparse (ftruncate, MAP_NORESERVE),
// mapped in the traced process and in hotprobe. hotprobe creates it and passes the fd to
// the program (HOTPROBE_MAPS_FD); the agent's MapSet lays the maps out in it; hotprobe
// reopens it to print (and to run END) when the program could not.
class SharedRegion {
 public:
  static constexpr std::size_t kDefaultBytes = std::size_t{1} << 30;
  static constexpr const char* kEnvFd = "HOTPROBE_MAPS_FD";

  // hotprobe's side: a new memfd of `bytes`, mapped. Null (and *error) on failure.
  static std::unique_ptr<SharedRegion> create(std::size_t bytes, std::string* error);
  // The agent's side: maps a region made by create() (the fd is kept, close-on-exec).
  static std::unique_ptr<SharedRegion> open(int fd, std::string* error);
  ~SharedRegion();
  SharedRegion(const SharedRegion&) = delete;
  SharedRegion& operator=(const SharedRegion&) = delete;

  int fd() const { return fd_; }
  std::size_t size() const { return size_; }
  region::Header& header() const { return *reinterpret_cast<region::Header*>(base_); }
  template <typename T>
  T* at(std::uint64_t off) const {
    return off ? reinterpret_cast<T*>(base_ + off) : nullptr;
  }
  // [off, off + bytes) lies in the region, after the header.
  bool contains(std::uint64_t off, std::uint64_t bytes) const {
    return off >= sizeof(region::Header) && off <= size_ && bytes <= size_ - off;
  }
  std::uint64_t offset_of(const void* p) const {
    return static_cast<std::uint64_t>(static_cast<const char*>(p) - base_);
  }
  // `bytes` of zeroed memory, kAlign-aligned: its offset, or 0 when the region is full
  // (counted in header().refused) or no longer shared (a fork child).
  std::uint64_t alloc(std::size_t bytes);
  // Writes to the region reach hotprobe (false in a fork child: see privatize()).
  bool shared() const { return shared_.load(std::memory_order_relaxed); }
  // In a fork child: the region becomes a private copy-on-write view at the same address,
  // so the child's maps never write into its parent's; nothing more is allocated in it.
  void privatize();
  // Closes the descriptor and keeps the mapping (an attach session's region: the agent
  // keeps no descriptor in the program; privatize() then copies what is in use).
  void close_fd();

  // The next MapSet built in this process lays its maps out in `r` (reopen = false) or
  // takes over the maps found there (reopen = true), checking `source_hash`.
  static void use_next(SharedRegion* r, bool reopen, std::uint64_t source_hash);
  // Why the last reopen found no usable maps (empty when it did).
  static std::string reopen_error();

 private:
  SharedRegion() = default;
  void note_identity();  // dev_ and ino_ of fd_
  friend class MapSet;
  char* base_ = nullptr;
  std::size_t size_ = 0;
  int fd_ = -1;
  std::uint64_t dev_ = 0, ino_ = 0;  // the memfd's: privatize() checks fd_ still names it
  std::atomic<bool> shared_{true};
};

// The identity of a script: a hash of its source, the same in the agent and in hotprobe.
std::uint64_t source_hash(std::string_view source);

// The agent's side, one region per process (`hotprobe run`). adopt_shared_maps: when
// $HOTPROBE_MAPS_FD names a region, maps it (and removes the variable) so that the next
// MapSet (the session's Program::compile) lays its maps out there; false otherwise.
bool adopt_shared_maps(std::string_view source);
// The maps of this process are all in a region hotprobe reads: hotprobe prints them, the
// agent does not (false without a region, in a fork child, or when the region ran out).
bool shared_maps_complete();
// The final report, when shared_maps_complete(): END's output `text` goes into the region
// (hotprobe prints it with the maps, so both print exactly once whatever happens next) and
// `text` is emptied; false (nothing done) when the maps are not complete or there is no room.
bool hand_over_end_output(std::string& text);
// The agent printed the maps itself (region::kMapsPrinted); no-op without a region.
void set_shared_maps_phase(std::uint32_t phase);
// The agent lost its channel and stopped tracing (Header::channel_lost); no-op without a
// region.
void mark_shared_maps_channel_lost() noexcept;

// The same for one region that a session holds (`hotprobe attach`: a region per session,
// received over its channel and laid out by its compile; docs/design/script-runtime.md).
// region_maps_complete: laid out, still shared, nothing refused.
bool region_maps_complete(const SharedRegion& r);
bool hand_over_end_output(SharedRegion& r, std::string& text);
void set_maps_phase(SharedRegion& r, std::uint32_t phase);
void mark_channel_lost(SharedRegion& r) noexcept;

// Key and string helpers.
void put_string(std::uint64_t* words, std::string_view s);  // kStrWords words, NUL padded
std::string_view get_string(const std::uint64_t* words);
// The bytes of a value or key part that is an array or struct copied whole: a view as long
// as the widest copy (kMaxRecBytes), to be read through the copy's layout, which reads its
// own size (record_span(size) words are there).
inline std::string_view get_bytes(const std::uint64_t* words) {
  return std::string_view(reinterpret_cast<const char*>(words), kMaxRecBytes);
}

}  // namespace hotprobe::script
