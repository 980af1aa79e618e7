// The agent's initializers, run once (init_once.ld moves every other .init_array entry of
// the agent into .hp_init_array, which the loader does not run). Whichever comes first
// runs them: the loader's call of this file's constructor, where it initializes the
// preloaded (or dlopen'ed) agent, or `hotprobe run`'s call of hotprobe_agent_init_early at
// the first constructor after libc's (src/inject/start.cc), so that the constructors of
// the program's other libraries run traced (docs/design/agent.md, "The process's first
// steps"). The order is the link's, as the loader's would be: libstdc++'s, the engine's
// and the script layer's static initializers, then preload.cc's constructor.
#include <atomic>

#include "agent/session.h"

extern "C" {
using HpInitFn = void (*)(int, char**, char**);
extern const HpInitFn __hp_init_array_start[] __attribute__((visibility("hidden")));
extern const HpInitFn __hp_init_array_end[] __attribute__((visibility("hidden")));
}

extern char** environ;

namespace {

std::atomic<bool> g_started{false};

void run_initializers(int argc, char** argv, char** envp) {
  if (g_started.exchange(true, std::memory_order_acq_rel)) return;
  for (const HpInitFn* f = __hp_init_array_start; f < __hp_init_array_end; ++f)
    (*f)(argc, argv, envp);
}

__attribute__((constructor)) void agent_init_from_loader(int argc, char** argv, char** envp) {
  run_initializers(argc, argv, envp);
}

}  // namespace

// For `hotprobe run`, called on the program's main thread by hotprobe (ptrace) before the
// loader initializes the program's libraries. Returns 0.
extern "C" __attribute__((visibility("default"))) long hotprobe_agent_init_early(long) {
  if (!g_started.load(std::memory_order_acquire)) hp::agent::note_started_early();
  run_initializers(0, nullptr, environ);
  return 0;
}
