#include "inject/frames.h"

#include <dwarf.h>
#include <elfutils/libdwfl.h>

#include <string>

namespace hp::inject {

namespace {

// Only the CFI in the module files themselves: no separate debuginfo, and never a
// debuginfod download while a thread of the target is stopped.
int no_debuginfo(Dwfl_Module*, void**, const char*, Dwarf_Addr, const char*, const char*, GElf_Word,
                 char**) {
  return -1;
}

char* g_no_path = nullptr;

const Dwfl_Callbacks kCallbacks = {
    dwfl_linux_proc_find_elf,
    no_debuginfo,
    nullptr,
    &g_no_path,
};

struct Walk {
  Frames* out;
  std::size_t max;
};

int on_frame(Dwfl_Frame* frame, void* arg) {
  auto* walk = static_cast<Walk*>(arg);
  Dwarf_Addr pc = 0;
  bool activation = false;
  if (!dwfl_frame_pc(frame, &pc, &activation)) return DWARF_CB_ABORT;
  walk->out->pcs.push_back(static_cast<std::uintptr_t>(activation ? pc : pc - 1));
  return walk->out->pcs.size() >= walk->max ? DWARF_CB_ABORT : DWARF_CB_OK;
}

std::string dwfl_error() {
  const char* e = dwfl_errmsg(-1);
  return e ? e : "unknown libdwfl error";
}

}  // namespace

struct Unwinder::State {
  pid_t pid = 0;
  Dwfl* dwfl = nullptr;
  bool attached = false;
  std::string error;
};

Unwinder::Unwinder(pid_t pid) : state_(std::make_unique<State>()) {
  state_->pid = pid;
  state_->dwfl = dwfl_begin(&kCallbacks);
  if (!state_->dwfl) {
    state_->error = dwfl_error();
    return;
  }
  dwfl_report_begin(state_->dwfl);
  const int rc = dwfl_linux_proc_report(state_->dwfl, pid);
  dwfl_report_end(state_->dwfl, nullptr, nullptr);
  if (rc != 0) {
    state_->error = "cannot read the modules of process " + std::to_string(pid);
    return;
  }
  // The thread to unwind is stopped by the injector (assume_ptrace_stopped): libdwfl
  // reads its registers and memory with ptrace and attaches nothing itself.
  if (dwfl_linux_proc_attach(state_->dwfl, pid, true) != 0) {
    state_->error = dwfl_error();
    return;
  }
  state_->attached = true;
}

Unwinder::~Unwinder() {
  if (state_->dwfl) dwfl_end(state_->dwfl);
}

void Unwinder::prepare() {
  if (!state_->dwfl) return;
  dwfl_getmodules(
      state_->dwfl,
      [](Dwfl_Module* mod, void**, const char*, Dwarf_Addr, void*) -> int {
        Dwarf_Addr bias = 0;
        (void)dwfl_module_eh_cfi(mod, &bias);
        return DWARF_CB_OK;
      },
      nullptr, 0);
}

Frames Unwinder::frames(pid_t tid, std::size_t max) {
  Frames f;
  if (!state_->attached) {
    f.error = state_->error;
    return f;
  }
  Walk walk{&f, max};
  const int rc = dwfl_getthread_frames(state_->dwfl, tid, on_frame, &walk);
  if (rc == 0) {
    f.complete = true;
  } else if (rc == -1) {
    f.error = dwfl_error();
  } else {
    f.error = "more than " + std::to_string(max) + " frames";
  }
  return f;
}

}  // namespace hp::inject
