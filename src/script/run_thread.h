// The run pass's view of the calling thread and process: its ids, cached per thread
// (`tid`, `pid`, `comm`), and the process's uid and gid, read once. The fault-safe reads
// of the program's memory (eval.h: read_user, read_user_string) are in run_thread.cc.
#pragma once

#include <sys/syscall.h>
#include <unistd.h>

namespace hotprobe::script::thread {

struct ThreadIds {
  int tid = 0;
  int pid = 0;
  bool comm_set = false;
  char comm[16] = {};
};
// constinit + initial-exec: an %fs-relative load, even in the agent's shared object.
extern constinit thread_local ThreadIds t_ids __attribute__((tls_model("initial-exec")));
extern int g_uid __attribute__((visibility("hidden")));  // hidden: no GOT load
extern int g_gid __attribute__((visibility("hidden")));

inline ThreadIds& ids() {
  if (t_ids.tid == 0) [[unlikely]] {
    t_ids.tid = static_cast<int>(syscall(SYS_gettid));
    t_ids.pid = getpid();
  }
  return t_ids;
}

// Once per process: the fork handler that resets the cache in a child, uid and gid.
void init_once();

}  // namespace hotprobe::script::thread
