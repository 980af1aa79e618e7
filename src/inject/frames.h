// The call frames of a thread the injector has stopped, unwound with the CFI of each
// module (elfutils' libdwfl: .eh_frame / .debug_frame of the target's own files). Private
// to src/inject.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace hp::inject {

struct Frames {
  // Frame 0 is the thread's pc; the others are call sites (return address - 1).
  std::vector<std::uintptr_t> pcs;
  // The unwinder reached the outermost frame (_start, clone); otherwise `error` says why
  // it stopped.
  bool complete = false;
  std::string error;
};

class Unwinder {
 public:
  // For process `pid`; its modules are read now, their files when first needed.
  explicit Unwinder(pid_t pid);
  ~Unwinder();
  Unwinder(const Unwinder&) = delete;
  Unwinder& operator=(const Unwinder&) = delete;

  // Reads every module's ELF headers and CFI now (before a thread is stopped), so that
  // frames() finds them parsed.
  void prepare();
  // The frames of thread `tid`, which the caller has stopped with ptrace; at most `max`.
  Frames frames(pid_t tid, std::size_t max = 512);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace hp::inject
