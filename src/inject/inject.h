// Loading a shared library into a running process, and calling functions in it, with
// ptrace: the injector behind `hotprobe attach -p PID`.
//
// The process is pinned first (pidfd, start time, executable), then checked. One thread of
// the target is seized (PTRACE_SEIZE) and interrupted (PTRACE_INTERRUPT); every other
// thread keeps running. After the stop the injector confirms the process is still the one
// it checked and only then reads its maps. The thread is sent into a small return stub
// written into the padding after libc's code: the stub saves the vector state, calls the
// loader's dlopen(path, RTLD_NOW) on the thread's own stack (below the red zone), enters a
// marker system call where hotprobe reads the result, then restores every register, the
// flags and the vector state itself and returns to where the thread was. hotprobe dying at
// any instant leaves the thread to finish and restore on its own. A thread stopped inside a
// blocking system call (read on a pipe, nanosleep) re-enters that call: no EINTR.
//
//   if (auto ok = hp::inject::check_can_trace(pid); !ok) { print(ok.error()); ... }
//   auto r = hp::inject::load_library(pid, "/usr/lib/hotprobe/libhotprobe_agent.so");
//   // r->handle is dlopen's return, r->pause_ms how long the thread was stopped.
//   auto v = hp::inject::call_function(pid, "/usr/lib/hotprobe/libhotprobe_agent.so",
//                                      "hp_agent_start", cookie);
//
// The thread is stopped only at a point where calling into the loader is safe: not
// owning the loader's locks, not in the dynamic loader, not in libc's allocator or loader
// entry points, not in a memory
// system call malloc makes with its lock held, not in libgcc's unwinder, not inside an
// rseq critical section. At another point it is let go, and the injector tries again
// (another thread, or the same one a millisecond later) until the timeout. A chosen thread
// that exits before it stops (a program whose threads come and go) is replaced by another
// (up to kMaxThreadExits times); the process runs on untouched.
// docs/design/inject.md has the protocol, the syscall-restart rules and the safety
// argument with its residual risks.
//
// Limits: x86-64, glibc (dlopen in libc.so.6, or libdl.so.2 / __libc_dlopen_mode for
// glibc before 2.34); not for threads with a CET shadow stack. Library paths are as the
// target sees them (its mount namespace and root): they are checked through
// /proc/PID/root before anything is stopped. Not thread-safe against itself for one
// target: one injection at a time per process (a second tracer is refused by the kernel).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>

#include "base/error.h"

namespace hp::inject {

// How many chosen threads may exit before they stop, in one injection, before the injector
// gives up (each is replaced by another thread of the process).
inline constexpr int kMaxThreadExits = 64;

struct Options {
  // Bounds the whole operation: finding a safe point, the call and the restore. A call
  // that has not returned by then is abandoned (see docs/design/inject.md).
  std::chrono::milliseconds timeout{5000};
  // start_preloaded_library: how long to wait for the child's exec (0: `timeout`). A
  // process seized while it was about to exec may have exec'd before the seize: then no
  // exec comes, and it is let go at this deadline.
  std::chrono::milliseconds exec_timeout{0};
  // The thread to use; 0 lets the injector choose (the thread group leader first, then
  // the others in turn when the leader is at an unsafe point). start_preloaded_library:
  // the thread seized, the one that execs (0: the leader).
  pid_t tid = 0;
  // Tests only: runs after the checks and before the first stop, to stage the races the
  // identity check catches (the process exits and its PID is reused, or it executes
  // another program).
  std::function<void()> after_checks;
  // Tests only: the legacy return (the stub returns into an unmapped address and hotprobe
  // restores the thread from the fault), which a hotprobe killed during the call turns
  // into the process's death. Exists to show that the kill tests catch it.
  bool test_sentinel_return = false;
  // Tests only: runs with the chosen thread's id once it is seized and before it is
  // interrupted, to stage a thread that exits in between.
  std::function<void(pid_t tid)> test_after_seize;
};

struct Report {
  // Interrupt to detach of the stop that made the call (how long the thread was held).
  double pause_ms = 0;
  // Of that, the time from PTRACE_INTERRUPT until the thread stopped: a thread that was
  // runnable but not on a CPU stops only once scheduled (ms on a loaded machine); it is
  // not held by us during that time.
  double stop_latency_ms = 0;
  std::uintptr_t handle = 0;    // dlopen's return (for unload_library)
  pid_t tid = 0;                // the thread that made the call
  int attempts = 0;             // stops taken (stops at an unsafe point are let go)
  int threads_exited = 0;       // chosen threads that exited before they stopped
  bool in_syscall = false;      // the thread was stopped in a system call, restarted after
  bool other_mount_ns = false;  // the target runs in another mount namespace
  // start_preloaded_library: the object whose constructor was about to run when the
  // library was started ("the program" for the executable's own).
  std::string start_object;
};

// Loads `library` (an absolute path as the target sees it) into process `pid` with
// dlopen(library, RTLD_NOW). Loading a library that is already loaded only raises its
// reference count (the loader's rule); each load is balanced by one unload_library.
// A dlopen failure is reported with the target's dlerror() text.
Result<Report> load_library(pid_t pid, const std::string& library, const Options& = {});

// dlclose(handle) in `pid` (a handle from load_library). Unloading runs the library's
// destructors; the caller must know that none of its code is running or referenced
// (threads it started, handlers it installed), exactly as for a dlclose in-process.
Result<Report> unload_library(pid_t pid, std::uintptr_t handle, const Options& = {});

// Calls `symbol`, a function `long f(long)` of `library_path` (already loaded in `pid`,
// path as the target sees it), with `arg`, and returns its result. The address comes
// from the library's ELF symbols (.dynsym or .symtab), so the function need not be
// exported; the process's thread is stopped only for the call.
Result<long> call_function(pid_t pid, const std::string& library_path, std::string_view symbol,
                           long arg, const Options& = {});

// The same with up to 6 arguments, `data` copied onto the thread's stack for the call:
// an argument equal to kDataArgument is replaced by its address in the target.
inline constexpr std::uint64_t kDataArgument = ~0ull - 0x5a;
Result<long> call_function_with_data(pid_t pid, const std::string& library_path,
                                     std::string_view symbol, std::span<const std::uint64_t> args,
                                     std::span<const char> data, const Options& = {});

// At a program's start (`hotprobe run`): a library the program preloads (LD_PRELOAD) is
// started after libc's initialization and before every other constructor, so that the
// constructors of the program's libraries already run with it; the loader's own order puts
// a preloaded library after every library it does not depend on. The library's `init`
// (`long init(long)`, exported) must run its initializers once however often it is called
// (the loader calls them again later). The caller forks the child, holds it before its
// execve until seize_child(pid) returned (the calling thread is then its tracer, and must
// make the next call too), lets it exec, and calls start_preloaded_library. That follows
// the child through its exec to the loader's notice that the initial objects are mapped
// and relocated (the debugger interface: _dl_debug_state with r_debug.r_state
// RT_CONSISTENT), puts a breakpoint on every initializer of those objects and on the entry
// point, and at the first one reached after one of libc's calls `init` on the main thread
// through the return stub, then detaches: the constructor runs next, as it would have.
// Breakpoints are removed on every path. The child ending first leaves its waitpid status
// in `*ended` (the caller has no other way to learn it). Signals the child gets meanwhile
// are delivered to it. docs/design/inject.md, "At a program's start".
Result<void> seize_child(pid_t pid);
Result<Report> start_preloaded_library(pid_t pid, const std::string& library, std::string_view init,
                                       const Options& opts, int* ended);

// Preflight, without stopping anything: the process exists and is not a zombie, is not
// stopped, is not traced by someone else, and this process may trace it (same uid or
// CAP_SYS_PTRACE, Yama's kernel.yama.ptrace_scope). Each refusal names the cause and the
// way out. load_library also applies OpenSSH's secure-path rule to the library when the
// caller is root or the library's owner is not the target's user: the file and every
// directory above it must be writable by root or the target's user only.
Result<void> check_can_trace(pid_t pid);

// Whether `pid` is `ancestor` or descends from it (its parent's parent ... is `ancestor`),
// as /proc says now.
bool is_descendant(pid_t pid, pid_t ancestor);

}  // namespace hp::inject
