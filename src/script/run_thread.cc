#include "script/run_thread.h"

#include <pthread.h>
#include <sys/uio.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "script/eval.h"

namespace hotprobe::script {
namespace thread {

constinit thread_local ThreadIds t_ids __attribute__((tls_model("initial-exec")));
int g_uid = 0, g_gid = 0;

namespace {

std::once_flag g_atfork_once;

void after_fork_child() {
  t_ids = ThreadIds{};
}

}  // namespace

void init_once() {
  std::call_once(g_atfork_once, [] {
    pthread_atfork(nullptr, nullptr, after_fork_child);
    g_uid = static_cast<int>(getuid());
    g_gid = static_cast<int>(getgid());
  });
}

}  // namespace thread

std::uint32_t read_user_string(std::uint64_t addr, std::uint32_t max, char* out) {
  out[0] = 0;
  if (max == 0 || addr == 0) return 0;
  if (max > kStrReadBytes) max = kStrReadBytes;
  // process_vm_readv on our own pid reads through the page tables without faulting: a bad
  // address is EFAULT, and a read that crosses into an unmapped page stops there.
  char buf[kStrBytes];
  iovec local{buf, max};
  iovec remote{reinterpret_cast<void*>(addr), max};
  ssize_t n = process_vm_readv(thread::ids().pid, &local, 1, &remote, 1, 0);
  if (n <= 0) {
    // The string may end just before a page boundary: read up to it.
    const std::uint64_t to_page = 4096 - (addr & 4095);
    if (to_page >= max) return 0;
    local.iov_len = remote.iov_len = to_page;
    n = process_vm_readv(thread::ids().pid, &local, 1, &remote, 1, 0);
    if (n <= 0) return 0;
  }
  const std::size_t limit = std::min<std::size_t>(static_cast<std::size_t>(n), max - 1);
  const std::size_t len = strnlen(buf, limit);
  std::memcpy(out, buf, len);
  out[len] = 0;
  return static_cast<std::uint32_t>(len);
}

bool read_user(std::uint64_t addr, void* out, std::size_t n) {
  iovec local{out, n};
  iovec remote{reinterpret_cast<void*>(addr), n};
  if (addr != 0 &&
      process_vm_readv(thread::ids().pid, &local, 1, &remote, 1, 0) == static_cast<ssize_t>(n)) {
    return true;
  }
  std::memset(out, 0, n);
  return false;
}

}  // namespace hotprobe::script
