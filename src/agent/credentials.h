// hotprobe's threads in a traced program hold the credentials of the program's thread that
// changes them.
//
// glibc's setuid, setgid, setgroups and the other set*id calls change the credentials of
// every thread: the calling thread signals each other thread (SIGSETXID, glibc's internal
// signal 33), whose handler makes the same system call there, and glibc aborts the process
// when one thread's result differs from the others'. The capability sets, the securebits
// (PR_SET_KEEPCAPS among them), the bounding and the ambient sets are per thread: capset
// and prctl change the calling thread's only. A program that keeps its capabilities across
// a change of user (setpriv --reuid: PR_SET_KEEPCAPS, setresuid, capset, setresgid) has
// them on its own thread, and a thread of hotprobe's that the program never told loses
// them at setresuid and fails the setresgid that follows: glibc aborts.
//
// So before each broadcast the calling thread's state is published (the agent's entry
// hooks on libc's set*id functions, publish_caller_credentials), and on every thread of
// hotprobe's the broadcast's SIGSETXID first makes the thread adopt that state, then runs
// glibc's own handler, which makes the same call on the same state: the same result, and
// the same credentials afterwards.
#pragma once

namespace hp::agent {

// The libc functions that broadcast a credential change (their entry is hooked).
inline constexpr const char* kSetxidFunctions[] = {
    "libc:setuid",   "libc:setgid",    "libc:seteuid",   "libc:setegid",  "libc:setreuid",
    "libc:setregid", "libc:setresuid", "libc:setresgid", "libc:setgroups"};

// Puts the relay in front of glibc's SIGSETXID handler, once per process (later calls do
// nothing). glibc installs its handler when the process's first thread is created: call
// this after one was. False when it could not be installed (the kernel's action for signal
// 33 is not a handler): hotprobe's threads then keep their own credentials.
bool install_setxid_relay() noexcept;

// The calling thread's capability sets, securebits, bounding and ambient sets, for
// hotprobe's threads to adopt at the next broadcast. Async-signal-safe (system calls only).
void publish_caller_credentials() noexcept;

}  // namespace hp::agent
