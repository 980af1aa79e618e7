// A transaction (core/transaction.h).
#include "core/transaction.h"

#include <algorithm>

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
  if (!patch_.empty()) {
    std::vector<PatchSite> patches;
    patches.reserve(patch_.size());
    for (Site* s : patch_)
      patches.push_back(patch_for(s, true));
    reg_.stage(patch_);
    if (auto applied = apply_patches(patches); !applied.ok()) {
      reg_.unstage();
      return applied.error();
    }
    reg_.add_patched();
  }
  if (!unpatch_.empty()) {
    std::vector<PatchSite> patches;
    patches.reserve(unpatch_.size());
    for (Site* s : unpatch_)
      patches.push_back(patch_for(s, false));
    HP_TRY(apply_patches(patches));
    reg_.remove_unpatched(unpatch_);
  }
  return {};
}

}  // namespace hp::core
