// Grace-period sequence numbers (the kernel's rcu_seq): the low bit says a grace period
// is in progress, the rest counts them. Shared by every domain's synchronize() so that
// concurrent callers share grace periods and polling works the same everywhere.
#pragma once

#include <atomic>
#include <cstdint>

#include "sync/domain.h"

namespace hp::sync {

class GpSequence {
 public:
  // The cookie of the first grace period that starts after now and then ends.
  GpCookie snap() const noexcept {
    std::uint64_t s = seq_.load(std::memory_order_acquire);
    return GpCookie{(s + 3) & ~std::uint64_t{1}};
  }
  bool done(GpCookie c) const noexcept {
    return static_cast<std::int64_t>(seq_.load(std::memory_order_acquire) - c.seq) >= 0;
  }
  // Writer side, under the domain's grace-period mutex.
  void start() noexcept { seq_.fetch_add(1, std::memory_order_acq_rel); }  // even -> odd
  void end() noexcept { seq_.fetch_add(1, std::memory_order_release); }    // odd -> even
  std::uint64_t completed() const noexcept { return seq_.load(std::memory_order_acquire) >> 1; }
  bool in_progress() const noexcept { return seq_.load(std::memory_order_acquire) & 1; }

 private:
  std::atomic<std::uint64_t> seq_{0};
};

}  // namespace hp::sync
