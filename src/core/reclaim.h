// Reclamation: what is freed when, after attach, detach and module events unpublish or
// unpatch it. Consumer arrays and consumers go after a grace period of their site's
// scheme; a site after that, and once no return instance references it and no thread
// runs in its trampoline.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/registry.h"
#include "core/site.h"
#include "hotprobe/probe.h"

namespace hp::core {

// Consumer arrays and consumers that readers of one scheme may still hold: deleted
// together after one grace period of that scheme (a batch queues one callback per
// scheme, not one per site).
struct Garbage {
  std::vector<ConsumerArray*> arrays;
  std::vector<Consumer*> consumers;
  bool empty() const { return arrays.empty() && consumers.empty(); }
};

// Frees sites no thread can reach any more: their trampoline slots under one lock
// (this runs on the grace-period worker while the next batch may be allocating slots),
// their last consumer arrays, and the sites.
void free_sites(std::span<Site* const> sites, Registry& reg);

// Deletes `garbage` after a grace period of `scheme` (never on this path).
void retire(Scheme scheme, Garbage&& garbage);

// Replaces the site's consumer array; the old one goes to `garbage`, which the caller
// retires under the site's scheme.
void publish_into(Site* s, Garbage& garbage);

// Replaces the site's consumer array; the old array and `freed` consumers are deleted
// after a grace period of the site's scheme (never on this path).
void publish(Site* s, std::vector<Consumer*> freed);

// The registry's retire epoch now (what a later reclaim() may free up to).
std::uint64_t current_epoch();

// Frees retired sites whose every rule passed: unpatched (they are retired), a grace
// period of their scheme since, no return instance referencing them, and no thread's
// ip inside their trampoline or copy. The caller has just waited for a grace period of
// each of `schemes` that started after retire epoch `epoch`: sites of those schemes
// retired at or before it have had theirs.
void reclaim(const std::vector<Scheme>& schemes, std::uint64_t epoch);

}  // namespace hp::core
