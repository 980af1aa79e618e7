// The registry (core/registry.h).
#include "core/registry.h"

#include <pthread.h>

#include <algorithm>

#include "base/assert.h"

#include "core/dispatch.h"
#include "core/int3_mode.h"
#include "core/x86_64/return_trampolines.h"
#include "sync/tasks_trace.h"

namespace hp::core {

Result<void> Registry::ensure_return_trampoline(Scheme s) {
  if (return_trampoline(s)) return {};
  // Anywhere will do: the trampolines are reached through absolute addresses.
  auto r = install_return_trampolines(ret_code_, s, reinterpret_cast<std::uint64_t>(&int3_hook));
  if (!r.ok()) return r.error();
  landing_return_[static_cast<int>(s)] = r->landing;
  return {};
}

void Registry::publish_int3_table() {
  std::vector<std::pair<std::uintptr_t, Site*>> entries;
  sites_.for_each([&](const SiteKey&, Site* s) {
    if (s->mode == SiteMode::int3) entries.push_back({s->patch_address, s});
  });
  for (Site* s : staged_) {
    if (s->mode == SiteMode::int3) entries.push_back({s->patch_address, s});
  }
  core::publish_int3_table(std::move(entries));
}

void Registry::stage(std::span<Site* const> sites) {
  HP_ASSERT(staged_.empty());
  staged_.assign(sites.begin(), sites.end());
  staged_int3_ = std::any_of(staged_.begin(), staged_.end(),
                             [](const Site* s) { return s->mode == SiteMode::int3; });
  if (staged_int3_) publish_int3_table();
}

void Registry::unstage() {
  staged_.clear();
  if (std::exchange(staged_int3_, false)) publish_int3_table();
  check();
}

void Registry::add_patched() {
  std::vector<std::pair<SiteKey, Site*>> keyed;
  keyed.reserve(staged_.size());
  for (Site* s : staged_) {
    HP_ASSERT(!sites_.get({s->dev, s->ino, s->file_offset}));
    keyed.push_back({{s->dev, s->ino, s->file_offset}, s});
    (s->mode == SiteMode::jmp ? sites_jmp_ : sites_int3_).fetch_add(1, std::memory_order_relaxed);
  }
  sites_.set_many(keyed);
  staged_.clear();
  staged_int3_ = false;  // the table already lists them
  check();
}

void Registry::remove_unpatched(std::span<Site* const> sites) {
  bool any_int3 = false;
  for (Site* s : sites) {
    const bool listed = sites_.erase({s->dev, s->ino, s->file_offset});
    HP_ASSERT(listed);
    (void)listed;
    (s->mode == SiteMode::jmp ? sites_jmp_ : sites_int3_).fetch_sub(1, std::memory_order_relaxed);
    any_int3 |= s->mode == SiteMode::int3;
    retired_.push_back({s, ++retire_epoch_});
  }
  if (any_int3) publish_int3_table();
  check();
}

void Registry::remove_pending(Consumer* c) {
  pending_.erase(std::remove(pending_.begin(), pending_.end(), c), pending_.end());
}

void Registry::reserve(Site* s, const void* owner) {
  const bool added =
      reserved_.emplace(SiteKey{s->dev, s->ino, s->file_offset}, Reservation{s, owner}).second;
  HP_ASSERT(added && !sites_.get({s->dev, s->ino, s->file_offset}));
  (void)added;
}

void Registry::unreserve(const Site* s) {
  const bool listed = reserved_.erase(SiteKey{s->dev, s->ino, s->file_offset}) == 1;
  HP_ASSERT(listed);
  (void)listed;
}

Registry::Reservation Registry::reserved(const SiteKey& k) const {
  auto it = reserved_.find(k);
  return it == reserved_.end() ? Reservation{} : it->second;
}

void Registry::keep_retired(std::vector<Retired> keep) {
  retired_.insert(retired_.end(), keep.begin(), keep.end());
}

void Registry::check() const {
#ifndef NDEBUG
  HP_CHECK(staged_.empty());
  constexpr std::size_t kWholeMapUpTo = 2048;
  if (sites_.size() > kWholeMapUpTo) return;
  std::uint64_t jmp = 0;
  std::vector<std::pair<std::uintptr_t, Site*>> int3;
  sites_.for_each([&](const SiteKey& k, Site* s) {
    HP_CHECK(k == (SiteKey{s->dev, s->ino, s->file_offset}));
    if (s->mode == SiteMode::jmp)
      jmp++;
    else
      int3.push_back({s->patch_address, s});
  });
  HP_CHECK_MSG(jmp == sites_jmp_.load(std::memory_order_relaxed) &&
                   int3.size() == sites_int3_.load(std::memory_order_relaxed),
               "the registry's site counts disagree with its map");
  std::sort(int3.begin(), int3.end());
  HP_CHECK_MSG(int3_table_lists(int3), "the int3 table disagrees with the registry's map");
#endif
}

Registry::Registry() {
  // Everything a trap or a dispatch may need is created now, before anything is
  // patched: creating it later could allocate inside a probed malloc.
  (void)sync::tasks_trace();
  sync::for_each_scheme([](Scheme s) {
    (void)entry_dispatcher(s);
    synchronize(s);  // constructs the scheme's domain
  });
  set_int3_hook(&int3_hook);
  pthread_atfork(&Registry::atfork_lock, &Registry::atfork_unlock, &Registry::atfork_unlock);
}

}  // namespace hp::core
