// One tracing session inside the traced process: an Engine, a compiled script Program,
// the channel to `hotprobe`, per-thread output rings and the reporter thread.
//
//   int fd = ...;                                   // connected SOCK_SEQPACKET socket
//   auto s = Session::start(fd, /*preload=*/true);  // reads 'S', compiles, attaches, BEGIN
//   ...                                             // the program runs
//   s.value()->finish(Session::Reason::exiting, 5s);  // END, maps, 'D'
//
// The preload path (preload.cc) makes one Session from the environment before main; the
// attach path (hotprobe_agent_start) makes one per connection, so several may live in
// one process, each with its own probes, rings and thread.
//
// Threads: Sink::write runs on probed threads (lock-free, per-thread ring); everything
// else that touches the Program (intervals, END, print_maps) runs on the reporter thread;
// BEGIN runs on the thread that calls start(), before the reporter exists.
#pragma once

#include <pthread.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "agent/map_data.h"
#include "agent/protocol.h"
#include "agent/ring.h"
#include "hotprobe/probe.h"
#include "hotprobe/result.h"
#include "script/program.h"

namespace hp::agent {

class Session final : public hotprobe::script::Sink {
 public:
  enum class Reason : std::uint8_t {
    stop,     // hotprobe asked (Ctrl-C) or went away
    exited,   // exit() ran in an action: the program runs on untraced
    exiting,  // the process is ending (exit, _exit, destructor)
    signal,   // SIGINT that the program left to its default action
  };

  // Reads the start message from `fd`, compiles, attaches every probe (one batch, all or
  // nothing), runs BEGIN and starts the reporter. An error has been sent to hotprobe
  // ('E') when this returns one. `fd` belongs to the session from here on.
  // `attached`: a `hotprobe attach` session (the agent was injected). At its end it
  // removes every probe it placed, its exit hooks included, in one batch before it tells
  // hotprobe it is done, then frees itself: the process is left as it was, with the
  // agent loaded and dormant, and another session may follow.
  // `exec_start_fd`: the image before an exec handed the session over (exec_handover):
  // the start message is read from that memfd, the maps are taken over from the region
  // where they are, BEGIN does not run again and hotprobe is told 'resumed'.
  static hotprobe::Result<Session*> start(int fd, bool attached = false, int exec_start_fd = -1);

 private:
  // start() once the session exists: `s` owns it until it is registered (then `self`).
  static hotprobe::Result<Session*> start_here(std::unique_ptr<Session>& s, Session*& self, int fd,
                                               bool attached_session, int exec_start_fd);

 public:
  ~Session() override;

  void write(std::string_view text) override;
  void request_exit() override;
  // A record in the thread's ring like write's, marked as a request; on the reporter
  // thread and during BEGIN, queued after the output before it (queue_request).
  void request(Request kind, std::string_view text) override;

  // The final report (END, maps, lost counts, 'D'), made once by the reporter thread;
  // waits at most `wait` for it. Async-signal-safe when called from a signal handler:
  // it only stores a flag and waits on a futex (the reporter looks at least every 5 ms).
  void finish(Reason reason, std::chrono::milliseconds wait) noexcept;
  // The process is about to exec `path` (the agent's execve/execveat hooks; `dirfd` as in
  // prepare_exec): the final report says so (Msg::exec), then finish(). A path that cannot
  // be exec'd changes nothing (execvp trying PATH: the image goes on, traced). An attached
  // session then leaves its probes in place, inactive: the exec removes them with the
  // image, and patching now would signal the exec'ing thread, whose pending signal would
  // kill the new program. Runs inside a handler: no allocation.
  void note_exec(int dirfd, const char* path) noexcept;
  // The program's thread is about to exec `path` with environment `envp` (`dirfd`: an
  // execveat's; AT_FDCWD for execve): the reporter sends what is buffered and the targets
  // placed so far, and makes the environment under which the new image's agent takes the
  // session over. That environment; `envp` itself when the exec will fail (a path that
  // cannot be exec'd: execvp trying PATH); null when this exec is not followed (a child's,
  // unless follow_child_execs_; no reporter): then note_exec.
  char** prepare_exec(int dirfd, const char* path, char** envp) noexcept;
  bool finished() const noexcept { return finished_.load(std::memory_order_acquire); }
  // The final report is taken at libc's _exit, after every atexit handler and destructor
  // (false: _exit could not be probed; then at exit()'s entry, or in the agent's destructor).
  bool reports_at_process_end() const noexcept { return end_hooked_; }
  // Actions of this session run (false: fork child not followed, or after finish).
  bool tracing() const noexcept { return tracing_.load(std::memory_order_relaxed); }
  // The process this session traces. A vfork child (posix_spawn, a shell running a
  // command) shares its parent's memory, and so this session, without being its process:
  // its exec and _exit must not end the parent's tracing.
  bool in_own_process() const noexcept;

  // pthread_atfork, for every live session.
  void before_fork();
  void after_fork_parent();
  void after_fork_child();

  // A thread's ring for this session, owned by both (freed by whichever lets go last):
  // the thread lets go when it is gone (its last steps, after its key destructors, may
  // still write: the reporter lets go for it once its tid is gone), the session when it
  // has drained the ring of a thread that is gone, or when it ends.
  struct ThreadRing {
    Ring ring;
    std::atomic<int> refs{2};
    std::atomic<bool> producer_gone{false};  // release by the thread, acquire by the reporter
    std::atomic<bool> session_gone{false};   // the thread must not write here any more
    std::atomic<bool> exiting{false};        // the thread's key destructors ran
    std::atomic<int> tid{0};                 // the thread's (a fork child's thread: its own)
    explicit ThreadRing(std::size_t cap) : ring(cap) {}
    static void release(ThreadRing* r) {
      if (r->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete r;
    }
  };

 private:
  Session() = default;
  hotprobe::Result<void> attach();
  bool start_reporter();
  static void* reporter_entry(void* self);
  void reporter_main();
  void do_finish(Reason reason);
  void detach_everything();
  void drain_and_send();
  // The reporter's side of prepare_exec.
  void exec_handover();
  // The channel, checked before every use: the program may have closed the descriptor
  // and reused its number for a file of its own. False (and the channel forgotten, never
  // closed: the number is not ours any more) when it is not the same socket.
  bool channel_ok() noexcept;
  // The channel's identity (agent/rendezvous.h, kEnvChannelId), for the images it execs.
  std::string channel_identity() const;
  // Whether `fd` is the channel here. No allocation, no change: a vfork child asks.
  bool holds_channel(int fd) const noexcept;
  // A followed child whose channel is gone (it closed its descriptors before its exec):
  // the channel back from hotprobe's rendezvous. False when hotprobe gives none.
  bool reconnect() noexcept;
  // Whether a lost channel is awaited (reconnect() at the exec or the end) rather than the
  // end of the session: a followed child's, with a rendezvous.
  bool awaits_channel() const noexcept;
  bool send_checked(std::string_view message);
  bool send_text_checked(Msg type, std::string_view text);
  // `record` (request kind byte + text) to send after `before`, which is emptied.
  void queue_request(std::string& before, std::string_view record);
  void send_queued();
  void mark_finished() noexcept;
  ThreadRing* ring_for_this_thread();
  // The calling thread's output goes to `out` directly, not to a ring (the reporter thread,
  // BEGIN); null: to rings again.
  static void set_direct_output(std::string* out) noexcept;
  // Whether `r` is one of the calling thread's rings.
  static bool ring_of_this_thread(const ThreadRing* r) noexcept;
  std::string render_attach_error(std::size_t probe, const hotprobe::Error& e) const;
  // The targets of uprobe/uretprobe probes whose module is not loaded in this process.
  std::vector<std::string> never_placed() const;
  // The uprobe targets of the script whose module is loaded here (the rest).
  std::vector<std::string> placed_targets() const;

  // The channel to hotprobe, on a high descriptor number (move_channel_high in
  // session.cc), and the identity of its socket. The reporter's only, after start().
  // No other descriptor is held: a finish request is seen by the reporter's next poll
  // (5 ms at most), and its completion is waited for on a futex (done_word_).
  int fd_ = -1;
  dev_t chan_dev_ = 0;
  ino_t chan_ino_ = 0;
  bool channel_lost_ = false;
  // A followed child's channel is gone, to be had back at its exec or end (reporter only).
  bool awaiting_channel_ = false;
  bool follow_forks_ = false;
  // --follow-forks and $HOTPROBE_FOLLOW_CHILD_EXECS: a followed child's exec is followed
  // too (off by default for now: docs/design/agent.md, "Exec").
  bool follow_child_execs_ = false;
  bool end_hooked_ = false;    // the report's hook is on _exit (reports_at_process_end)
  bool attached_ = false;      // hotprobe attach: detach everything and free at the end
  bool forked_child_ = false;  // a --follow-forks child's copy of the session
  char exec_path_[4096] = {};  // note_exec: what the process is about to exec
  pid_t pid_ = 0;              // the traced process (start, after_fork_child)
  // Exec (hotprobe run): the start message as received, the agent's path, the run's map
  // region descriptor, and the hand-over between the exec'ing thread and the reporter:
  // exec_word_ is 0 idle, 4 claimed, 1 requested, 2 environment ready (exec_envp_), 3
  // failed.
  std::string start_message_;
  std::string agent_path_;
  int run_region_fd_ = -1;
  bool resumed_ = false;  // this image took the session over from the one that exec'd
  std::atomic<std::uint32_t> exec_word_{0};
  char** exec_envp_in_ = nullptr;
  int exec_start_fd_ = -1;   // the memfd of the exec'ing thread's process
  int exec_region_fd_ = -1;  // the run's region, passed on (not to a child's new image)
  pid_t exec_pid_ = 0;       // the process that exec's
  pid_t exec_tid_ = 0;       // its thread that exec's
  bool exec_child_ = false;  // it is a followed child: its new image is a child's too
  // This image was started early (started_early()): an exec, its own or a followed
  // child's, waits until hotprobe traces the exec'ing thread, so that the new image's
  // agent starts early too.
  bool exec_early_ = false;
  std::uint64_t handover_ns_ = 0;  // reporter: when the last hand-over was ready
  std::vector<std::string> exec_env_;
  std::vector<char*> exec_envp_;
  std::string source_, filename_;
  std::unique_ptr<hotprobe::Engine> engine_;
  // hotprobe attach: the session's map region, received with the start message (declared
  // before program_, whose maps live in it, so that it is unmapped after them).
  std::unique_ptr<hotprobe::script::SharedRegion> region_;
  std::unique_ptr<OpenProgram> program_;        // its maps in reach: a followed child sends them
  std::vector<hotprobe::Handle> handles_;       // the script's probes
  std::uint32_t trap_sites_ = 0;                // of them, sites in int3 mode (said)
  std::vector<hotprobe::Handle> exit_handles_;  // exit, exec and set*id hooks
  std::vector<std::size_t> intervals_;          // indexes into probes()

  std::atomic<bool> tracing_{false};
  std::atomic<bool> finished_{false};
  std::atomic<std::uint32_t> done_word_{0};  // futex: 1 once finished_ is set
  std::atomic<int> requested_{0};            // 1 + Reason of the first finish request; 0: none
  std::atomic<bool> reporter_running_{false};
  pthread_t reporter_{};

  // Rings of the threads that wrote. Lock order: rings_mu_ is a leaf (the producer takes
  // it once per thread to register; the reporter to walk; fork prepare to freeze).
  std::mutex rings_mu_;
  std::vector<ThreadRing*> rings_;
  std::uint64_t lost_retired_ = 0;  // reporter: losses of freed rings
  std::uint64_t lost_sent_ = 0;     // reporter: total already reported
  unsigned drains_ = 0;             // reporter: drains so far (a sweep of the rings' threads)
  std::string out_;                 // reporter: output waiting to be sent
  // Reporter (and BEGIN): messages to send before out_, in order: output, then a
  // request ('C') after it, as system() and cat() ran (queue_request, send_queued).
  std::vector<std::pair<Msg, std::string>> queued_;
};

// The stack of every thread the agent starts in the program (the attach thread that
// compiles and attaches, each session's reporter). Explicit: glibc sizes a default stack
// from the program's RLIMIT_STACK, which may be anything (`ulimit -s unlimited`: 2 MiB
// per thread; a small limit: a stack that small, which the compile may overflow). The deepest
// script the checker accepts needs under 32 KiB in the script layer; the compile thread
// also runs the engine's attach (ELF reads, instruction decoding) and the realpath and
// fmt calls of error messages, with PATH_MAX buffers: 256 KiB leaves a margin of 8 times
// the script layer's need. Sanitizer builds use 4 times that (their frames are larger).
#if defined(HOTPROBE_ASAN) || defined(HOTPROBE_TSAN)
inline constexpr std::size_t kAgentThreadStack = std::size_t{1} << 20;
#else
inline constexpr std::size_t kAgentThreadStack = std::size_t{256} << 10;
#endif
// pthread_create of a detached thread with a kAgentThreadStack stack: 0 or an errno.
int start_agent_thread(pthread_t* thread, void* (*entry)(void*), void* arg);

// The agent's edits of the program's environment, made on `environ` in place as glibc's
// unsetenv and setenv make them, never through those functions: a program may define its
// own (bash does, acting on its variable table, which does not exist yet when the agent
// starts), and the agent's calls would bind to them and leave the variables in place for
// the program and every command it runs. env_value: the value of `name` in `environ`.
const char* env_value(const char* name) noexcept;
void env_remove(const char* name) noexcept;
// `name` set to `value`: the entry replaced in place, or appended (environ reallocated).
void env_set(const char* name, const char* value);

// Whether hotprobe run started this image's agent before its libraries' constructors
// (init_once.cc): hotprobe can trace the process, and its next exec is started so too.
bool started_early() noexcept;
// init_once.cc's call when hotprobe run starts the agent early.
void note_started_early() noexcept;

// The agent's own part of LD_PRELOAD in this image (preload.cc), for the images the
// program exec's; the agent's path alone when not set.
void set_agent_preload(std::string_view preload);
// That part, as set; null when set_agent_preload was not called.
const std::string* agent_preload();

// hotprobe run's rendezvous (agent/rendezvous.h), from the environment the image started
// with (preload.cc); null when hotprobe gave none.
void set_rendezvous(std::string_view name);
const std::string* rendezvous();

// Sessions alive in this process (the fork handlers walk them).
void register_session(Session* s);
// pthread_atfork handlers for every registered session (installed once by the agent).
void fork_prepare();
void fork_parent();
void fork_child();

}  // namespace hp::agent
