// A transaction (core/transaction.h).
#include "core/transaction.h"

#include <algorithm>
#include <iterator>

#include "base/assert.h"
#include "core/site_builder.h"
#include "core/text_patch.h"

namespace hp::core {

Garbage& Transaction::garbage_of(Scheme s) {
  for (auto& [scheme, g] : garbage_) {
    if (scheme == s) return g;
  }
  garbage_.push_back({s, Garbage{}});
  schemes_.push_back(s);
  return garbage_.back().second;
}

namespace {

// Whether no site of `sites` patches a byte that one of `patches` writes.
bool disjoint(std::vector<PatchSite> patches, const std::vector<Site*>& sites) {
  std::sort(patches.begin(), patches.end(),
            [](const PatchSite& a, const PatchSite& b) { return a.addr < b.addr; });
  for (const Site* s : sites) {
    const PatchSite restore = patch_for(s, false);
    const std::uintptr_t end = restore.addr + restore.new_bytes.size();
    // The last patch that starts before `end` is the only one that can reach into it.
    auto it = std::lower_bound(patches.begin(), patches.end(), end,
                               [](const PatchSite& p, std::uintptr_t e) { return p.addr < e; });
    if (it != patches.begin() &&
        std::prev(it)->addr + std::prev(it)->new_bytes.size() > restore.addr)
      return false;
  }
  return true;
}

}  // namespace

Result<void> Transaction::commit() {
  HP_ASSERT(&reg_ == &Registry::get());
  reg_.mu_.assert_held();  // the same lock: there is one registry
  // A site once, though several of its consumers changed.
  std::sort(publish_.begin(), publish_.end());
  publish_.erase(std::unique(publish_.begin(), publish_.end()), publish_.end());
  for (Site* s : publish_)
    publish_into(s, garbage_of(s->scheme));
  for (auto& [scheme, g] : garbage_)
    retire(scheme, std::move(g));
  garbage_.clear();
  if (!unmapped_.empty()) reg_.remove_unpatched(unmapped_);
  std::vector<PatchSite> patches;
  patches.reserve(patch_.size() + unpatch_.size());
  for (Site* s : patch_)
    patches.push_back(patch_for(s, true));
  // Restored in the same text_patch transaction when no byte of theirs is also one of
  // the new sites' (a transaction that both attaches and detaches: one pass, not two).
  const bool together = !patch_.empty() && !unpatch_.empty() && disjoint(patches, unpatch_);
  if (together) {
    for (Site* s : unpatch_)
      patches.push_back(patch_for(s, false));
  }
  if (!patch_.empty()) {
    reg_.stage(patch_);
    if (auto applied = apply_patches(patches); !applied.ok()) {
      reg_.unstage();
      return applied.error();
    }
    reg_.add_patched();
    if (together) {
      reg_.remove_unpatched(unpatch_);
      return {};
    }
  }
  if (!unpatch_.empty()) {
    patches.clear();
    for (Site* s : unpatch_)
      patches.push_back(patch_for(s, false));
    HP_TRY(apply_patches(patches));
    reg_.remove_unpatched(unpatch_);
  }
  return {};
}

}  // namespace hp::core
