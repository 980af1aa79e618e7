// A transaction: one change to the process's probes, made the way the kernel's uprobes
// register, apply and unapply, and Frida's interceptor commits a transaction. Attach,
// detach and module events each make one under the registry lock:
//
//   publish   the consumer arrays of the sites whose consumers changed (a thread that
//             reaches a new site already finds them); the old arrays and the consumers
//             freed go to one grace period per scheme;
//   unmapped  sites whose module is gone leave the registry (nothing to restore);
//   stage     the new sites' int3-mode ones go in the trap table;
//   patch     one text_patch transaction writes the new sites' bytes, then
//   commit    they go in the registry, or roll back: out of the trap table again (the
//             caller then frees them after a tasks-trace grace period);
//   unpatch   the bytes of sites left without consumers are restored, and they leave
//             the registry, retired until reclaim() frees them. In the patch step's
//             text_patch transaction when no byte of theirs is one the new sites write
//             (an engine transaction that attaches and detaches: one pass), else in a
//             second one after it.
#pragma once

#include <vector>

#include "base/error.h"
#include "base/thread_annotations.h"
#include "core/reclaim.h"
#include "core/registry.h"
#include "core/site.h"

namespace hp::core {

class Transaction {
 public:
  explicit Transaction(Registry& reg) : reg_(reg) {}
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

  // The site's members changed: its consumer array is replaced at commit.
  void publish(Site* s) { publish_.push_back(s); }
  // A consumer taken off a site: deleted after a grace period of `scheme`.
  void free_consumer(Consumer* c, Scheme scheme) { garbage_of(scheme).consumers.push_back(c); }
  // A new site (built, not in the registry): patched at commit.
  void patch(Site* s) { patch_.push_back(s); }
  // A site of the registry left without consumers: restored at commit.
  void unpatch(Site* s) { unpatch_.push_back(s); }
  // A site of the registry whose module was unmapped.
  void unmapped(Site* s) { unmapped_.push_back(s); }

  // Runs the steps above. An error from patching leaves every new site unpatched and out
  // of the registry (the caller takes its consumers off and frees it after a tasks-trace
  // grace period); an error from restoring leaves those sites patched and registered.
  // (The analysis names the one registry's lock Registry::get().mu_.)
  Result<void> commit() HP_REQUIRES(Registry::get().mu_);
  // The schemes whose grace periods free something of this transaction.
  const std::vector<Scheme>& schemes() const { return schemes_; }

 private:
  Garbage& garbage_of(Scheme s);

  Registry& reg_;
  std::vector<Site*> publish_, patch_, unpatch_, unmapped_;
  std::vector<std::pair<Scheme, Garbage>> garbage_;
  std::vector<Scheme> schemes_;
};

}  // namespace hp::core
