// options_from_environment (include/hotprobe/probe.h): EngineOptions from the HOTPROBE_*
// variables, for the edge of the program (the agent, an embedding that wants them). The
// engine itself reads no variable: Engine::create uses its options only.
#include <charconv>
#include <cstdlib>
#include <string>
#include <string_view>
#include <system_error>

#include "core/text_patch.h"
#include "hotprobe/probe.h"

namespace hotprobe {

namespace {

// A variable's value, or null when it is unset or empty.
const char* environment(const char* name) {
  const char* v = std::getenv(name);  // NOLINT(concurrency-mt-unsafe): read only
  return v && *v ? v : nullptr;
}

Result<unsigned> batch_threads(std::string_view text) {
  unsigned n = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (ec != std::errc() || end != text.data() + text.size() || n == 0) {
    return Error(Errc::invalid_argument,
                 "HOTPROBE_BATCH_THREADS=" + std::string(text) +
                     " is not a number of threads: set it to 1 (a batch runs on the calling "
                     "thread) or 2 (a second thread for batches of 1,024 specs or more), or "
                     "unset it");
  }
  return n;
}

Result<ReturnMode> return_mode(std::string_view m) {
  if (m == "auto") return ReturnMode::automatic;
  if (m == "ret") return ReturnMode::ret_instructions;
  if (m == "hijack") return ReturnMode::hijack;
  return Error(Errc::invalid_argument,
               "HOTPROBE_RETURN_PROBES=" + std::string(m) +
                   " is not one of auto, ret, hijack: set one of them, or unset it to use "
                   "each probe's return_mode");
}

}  // namespace

Result<EngineOptions> options_from_environment(EngineOptions o) {
  if (o.batch_threads == 0) {
    if (const char* v = environment("HOTPROBE_BATCH_THREADS")) {
      auto n = batch_threads(v);
      if (!n.ok()) return n.error();
      o.batch_threads = *n;
    }
  }
  if (!o.debug)
    o.debug = std::getenv("HOTPROBE_DEBUG") != nullptr;  // NOLINT(concurrency-mt-unsafe)
  if (!o.return_mode) {
    if (const char* v = environment("HOTPROBE_RETURN_PROBES")) {
      auto m = return_mode(v);
      if (!m.ok()) return m.error();
      o.return_mode = *m;
    }
  }
  if (o.move_signal == 0) {
    if (const char* v = environment("HOTPROBE_SIGNAL")) {
      // A real-time signal this process neither handles nor ignores; the refusal names
      // the variable.
      auto sig = hp::core::choose_move_signal(v);
      if (!sig.ok()) return sig.error();
      o.move_signal = *sig;
    }
  }
  return o;
}

}  // namespace hotprobe
