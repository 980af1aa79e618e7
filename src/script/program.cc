// Program: the front end's parse() and check(), then the evaluator's lowering (eval.h).
#include "script/program.h"

#include "script/ast.h"
#include "script/check.h"
#include "script/eval.h"
#include "script/unwind_table.h"

namespace hotprobe::script {

namespace {

class ProgramImpl final : public Program {
 public:
  explicit ProgramImpl(std::unique_ptr<Runtime> rt) : rt_(std::move(rt)) {}

  std::span<const Probe> probes() const override { return rt_->probe_list; }
  ProbeSpec spec(std::size_t index) override { return rt_->spec(index); }
  void bind(Sink* sink) override { rt_->sink = sink; }

  void run_begin() override {
    rt_->start_ns = monotonic_ns();
    run_kind(Probe::Kind::begin);
  }
  void run_end() override {
    // END runs even after exit() (bpftrace runs it on exit too).
    const bool was = rt_->exited.exchange(false, std::memory_order_relaxed);
    run_kind(Probe::Kind::end);
    if (was) rt_->exited.store(true, std::memory_order_relaxed);
  }
  void run_interval(std::size_t index) override {
    if (rt_->exited.load(std::memory_order_relaxed)) return;
    rt_->run_probe(index, nullptr);
  }
  std::string print_maps() override { return rt_->print_maps(); }
  bool exited() const override { return rt_->exited.load(std::memory_order_relaxed); }
  void set_active(bool active) override { rt_->active.store(active, std::memory_order_relaxed); }
  std::uint64_t read_faults() const override {
    return rt_->read_faults.load(std::memory_order_relaxed);
  }
  void reset_maps() override {
    for (std::size_t i = 0; i < rt_->maps->size(); ++i)
      rt_->maps->clear(i);
  }

 private:
  void run_kind(Probe::Kind kind) {
    for (std::size_t i = 0; i < rt_->probe_list.size(); ++i) {
      if (rt_->probe_list[i].kind != kind) continue;
      if (kind == Probe::Kind::begin && rt_->exited.load(std::memory_order_relaxed)) return;
      rt_->run_probe(i, nullptr);
    }
  }

  std::unique_ptr<Runtime> rt_;
};

}  // namespace

std::unique_ptr<Program> program_of(std::unique_ptr<Runtime> rt) {
  return std::make_unique<ProgramImpl>(std::move(rt));
}

Result<std::unique_ptr<Program>> Program::compile(std::string_view source,
                                                  const CompileOptions& options) {
  auto ast = parse_and_check(source, options);  // with the positional parameters
  if (!ast) return ast.error();
  auto rt = lower(std::move(*ast), options.format);
  if (!rt) return rt.error();
  if (std::string bad = unwind::mode_error(); !bad.empty())
    return Error(Errc::invalid_argument, bad);
  return program_of(std::move(*rt));
}

}  // namespace hotprobe::script
