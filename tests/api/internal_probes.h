// The engine's internal probes (the module watcher on _dl_debug_state, the unwinder
// hooks) are placed with the first engine and the first return probe, count in
// Stats::sites_jmp / sites_int3, and come off when the last engine is destroyed. Tests
// that compare those counts install them first and keep an engine alive for the whole
// program: `INSTALL_INTERNAL_PROBES(":some_function_of_this_program")`.
#pragma once

#include <memory>
#include <string>

#include <gtest/gtest.h>

#include "hotprobe/probe.h"

namespace hp_test {

class InternalProbesEnvironment : public ::testing::Environment {
 public:
  explicit InternalProbesEnvironment(std::string target, void (*before)() = nullptr)
      : target_(std::move(target)), before_(before) {}
  void SetUp() override {
    if (before_) before_();
    auto e = hotprobe::Engine::create();
    if (!e.ok()) return;
    hotprobe::ProbeSpec s;
    s.target = target_;
    s.on_entry = [](hotprobe::Hit&) {};
    s.on_return = [](hotprobe::Hit&) {};
    auto h = (*e)->attach(s);
    if (h.ok()) (void)(*e)->detach(*h);
    keep_ = std::move(*e);
  }

 private:
  std::string target_;
  void (*before_)();
  std::unique_ptr<hotprobe::Engine> keep_;
};

}  // namespace hp_test
