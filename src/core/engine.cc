// The probe engine's public face (include/hotprobe/probe.h): Engine forwards to
// EngineImpl (core/engine_impl.h). See docs/design/core.md for the parts: the resolver,
// the site builder, the registry, the transaction, reclamation, int3 mode and the
// internal probes.
#include <csignal>
#include <string>
#include <utility>
#include <vector>

#include "core/dispatch.h"
#include "core/engine_impl.h"
#include "core/internal_probes.h"
#include "core/registry.h"
#include "core/text_patch.h"
#include "core/thread_state.h"
#include "hotprobe/probe.h"

// ---------------------------------------------------------------------------------------
namespace hotprobe {

struct Engine::Impl : hp::core::EngineImpl {};

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Engine::~Engine() {
  impl_->end_open_transaction();
  std::vector<Handle> all;
  {
    hp::MutexLock lock(hp::core::Registry::get().mu_);
    impl_->consumers.for_each(
        [&](std::uint64_t id, hp::core::Consumer*) { all.push_back(Handle{id}); });
  }
  if (!all.empty()) (void)impl_->detach(all, true);
  hp::core::engine_destroyed();
}

namespace {

// The defaults and the checks (the environment is the caller's: options_from_environment).
Result<void> settle(EngineOptions& o) {
  if (o.batch_threads == 0) o.batch_threads = 1;
  if (o.move_signal != 0) {
    if (o.move_signal < SIGRTMIN || o.move_signal > SIGRTMAX) {
      return Error(Errc::invalid_argument,
                   "EngineOptions::move_signal = " + std::to_string(o.move_signal) +
                       " is not a real-time signal: use one from " + std::to_string(SIGRTMIN) +
                       " to " + std::to_string(SIGRTMAX) +
                       " that the program does not use, or 0 to let hotprobe pick one");
    }
    if (int installed = hp::core::request_move_signal(o.move_signal);
        installed != 0 && installed != o.move_signal) {
      return Error(Errc::busy, "the move signal of this process is already " +
                                   std::to_string(installed) +
                                   " (installed with the first patch, one per process): create "
                                   "the engine with move_signal = " +
                                   std::to_string(installed) + ", or 0");
    }
  }
  if (o.debug) hp::core::Registry::get().set_debug();
  return {};
}

}  // namespace

Result<std::unique_ptr<Engine>> Engine::create(EngineOptions options) {
  if (options.return_stack_depth == 0 || options.return_stack_depth > hp::core::kMaxReturnDepth) {
    return Error(Errc::invalid_argument, "return_stack_depth must be between 1 and " +
                                             std::to_string(hp::core::kMaxReturnDepth));
  }
  HP_TRY(settle(options));
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  (void)hp::core::Registry::get();
  hp::core::engine_created();
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

Scheme Engine::scheme() const noexcept {
  return impl_->options.scheme;
}

namespace {

// While a thread runs the engine's attach or detach, the calls the engine itself makes
// (strlen and malloc while resolving, free while retiring) are hotprobe's, not the
// program's: a probe they hit is a miss (Stats::misses_recursion), as a hit inside a
// handler is, so a count on strlen is the program's calls, as bpftrace counts them.
class EngineCallScope {
 public:
  EngineCallScope() : saved_(hp::core::tls_state.in_handler) {
    hp::core::tls_state.in_handler = true;
  }
  ~EngineCallScope() { hp::core::tls_state.in_handler = saved_; }
  EngineCallScope(const EngineCallScope&) = delete;
  EngineCallScope& operator=(const EngineCallScope&) = delete;

 private:
  bool saved_;
};

}  // namespace

Result<std::vector<Handle>> Engine::attach(const ProbeSpec& spec) {
  EngineCallScope scope;
  auto r = impl_->attach(std::span<const ProbeSpec>(&spec, 1), BatchMode::best_effort);
  return std::move(r[0]);
}

std::vector<Result<std::vector<Handle>>> Engine::attach(std::span<const ProbeSpec> specs,
                                                        BatchMode mode) {
  EngineCallScope scope;
  return impl_->attach(specs, mode);
}

Result<void> Engine::detach(std::span<const Handle> handles) {
  EngineCallScope scope;
  return impl_->detach(handles, true);
}
Result<void> Engine::detach_nosync(std::span<const Handle> handles) {
  EngineCallScope scope;
  return impl_->detach(handles, false);
}
void Engine::sync() {
  impl_->sync();
}

void Engine::begin_transaction() {
  impl_->begin_transaction();
}
Result<void> Engine::end_transaction() {
  EngineCallScope scope;
  return impl_->end_transaction();
}

int reserved_signal() noexcept {
  return hp::core::move_signal_number();
}

Stats Engine::stats() const {
  Stats s;
  auto t = hp::core::hit_totals();
  s.hits = t.hits;
  s.misses_recursion = t.misses_recursion;
  s.misses_return_stack = t.misses_return_stack;
  s.skipped_own = t.skipped_own;
  auto& reg = hp::core::Registry::get();
  s.sites_jmp = reg.sites_jmp();
  s.sites_int3 = reg.sites_int3();
  s.sync_core_rounds = hp::core::patch_totals().sync_core_rounds;
  s.grace_periods = impl_->grace_periods.load(std::memory_order_relaxed);
  hp::MutexLock lock(reg.mu_);
  hp::core::Registry::get().mu_.assert_held();  // the analysis names it Registry::get().mu_
  // As hits see them: a transaction's staged changes count from its end.
  s.consumers = impl_->consumers.size() + impl_->staged.detached.size();
  s.zombie_sites = reg.retired().size();
  return s;
}

}  // namespace hotprobe
