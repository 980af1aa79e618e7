// The engine's internal probes: the module watcher (dlopen and dlclose apply and take off
// probes of the libraries they map) and the unwinder hooks (exceptions through hijacked
// return addresses). They live while some Engine does.
#pragma once

namespace hp::core {

// An Engine was created: counted, and the module watcher is in place.
void engine_created();
// An Engine was destroyed (its consumers detached): the last one takes the internal
// probes off, in one batch. The unwinder hooks stay while a return instance of a
// detached site is still live on some thread's stack (a thread blocked inside a probed
// function): an exception thrown through that frame needs them.
void engine_destroyed();
// Internal probes that keep unwinders working through hijacked return addresses (see
// dispatch.h): installed once, before the first return probe, in every loaded module
// that defines the unwinder's entry points (libgcc_s, or a static copy in the program).
void ensure_unwinder_probes();

}  // namespace hp::core
