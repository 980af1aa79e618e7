// FlatMap: a hash map from keys to non-null pointers in one array, for the engine's
// registry of sites and each engine's consumers.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "base/assert.h"

namespace hp::core {

// A hash map from keys to non-null pointers in one array (open addressing, linear probing,
// deletion by shifting back, at most half full): the registry's sites and an engine's
// consumers. std::unordered_map allocated a node per entry, two for each probe of a batch
// of 10,000 (and freed them again on detach).
// `Shrink`: rehash into a smaller table when an eighth full (for a map that is looked up
// while nearly empty; one that is only walked and filled keeps its table).
template <class K, class V, class Hash, bool Shrink = true>
class FlatMap {
 public:
  using Entry = std::pair<K, V>;  // second == nullptr: an empty slot

  V get(const K& k) const {
    if (size_ == 0) return nullptr;
    for (std::size_t i = start(k);; i = next(i)) {
      if (!slots_[i].second) return nullptr;
      if (slots_[i].first == k) return slots_[i].second;
    }
  }
  // A hint that get(k), set(k) or erase(k) comes soon (a batch looks ahead).
  void prefetch(const K& k) const {
    if (!slots_.empty()) __builtin_prefetch(&slots_[start(k)]);
  }
  void set(const K& k, V v) {
    HP_CHECK(v != nullptr);
    if (2 * (size_ + 1) > slots_.size()) grow(size_ + 1);
    std::size_t i = start(k);
    for (; slots_[i].second; i = next(i)) {
      if (slots_[i].first == k) {
        slots_[i].second = v;
        return;
      }
    }
    slots_[i] = {k, v};
    size_++;
  }
  // set() of every entry, in the order of their slots: a batch of 10,000 entries in a
  // table of 32,768 slots then walks the table once instead of missing the cache on
  // every entry (and a batch's keys are distinct from each other and from the map's).
  void set_many(const std::vector<Entry>& entries) {
    reserve(size_ + entries.size());
    // Each entry's slot computed once, sorted as plain numbers (a comparison that hashes
    // both keys made the sort most of the cost).
    std::vector<std::pair<std::size_t, std::size_t>> order(entries.size());  // slot, entry
    for (std::size_t i = 0; i < entries.size(); i++)
      order[i] = {start(entries[i].first), i};
    std::sort(order.begin(), order.end());
    for (const auto& [slot, i] : order)
      set(entries[i].first, entries[i].second);
  }
  bool erase(const K& k) {
    if (slots_.empty()) return false;
    std::size_t i = start(k);
    for (; slots_[i].second; i = next(i)) {
      if (slots_[i].first == k) break;
    }
    if (!slots_[i].second) return false;
    // Shift back every later entry of the run that may sit in the hole.
    for (std::size_t j = next(i); slots_[j].second; j = next(j)) {
      const std::size_t home = start(slots_[j].first);
      if (((j - home) & mask()) >= ((j - i) & mask())) {
        slots_[i] = slots_[j];
        i = j;
      }
    }
    slots_[i] = {K{}, nullptr};
    size_--;
    // Shrunk when an eighth full: a table that held a batch of 10,000 sites would
    // otherwise make every later lookup a cache miss in 1 MiB of empty slots.
    if (Shrink && slots_.size() > 64 && 8 * size_ < slots_.size()) grow(size_);
    return true;
  }
  void reserve(std::size_t n) {
    if (2 * n > slots_.size()) grow(n);
  }
  std::size_t size() const { return size_; }

  // Every entry (not in any order); the map must not change while it is iterated.
  template <class F>
  void for_each(F&& f) const {
    for (const Entry& e : slots_) {
      if (e.second) f(e.first, e.second);
    }
  }

 private:
  std::size_t mask() const { return slots_.size() - 1; }
  std::size_t next(std::size_t i) const { return (i + 1) & mask(); }
  std::size_t start(const K& k) const {
    return static_cast<std::size_t>((Hash()(k) * 0x9E3779B97F4A7C15ull) >> 20) & mask();
  }
  // Rehashes into the smallest table that holds n entries at most half full.
  void grow(std::size_t n) {
    std::size_t cap = 16;
    while (cap < 2 * n)
      cap *= 2;
    std::vector<Entry> old(cap, Entry{K{}, nullptr});
    old.swap(slots_);
    size_ = 0;
    for (const Entry& e : old) {
      if (e.second) set(e.first, e.second);
    }
  }
  std::vector<Entry> slots_;
  std::size_t size_ = 0;
};

}  // namespace hp::core
