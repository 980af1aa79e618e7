#include "agent/session.h"
#include "base/signals.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <link.h>
#include <linux/futex.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstring>

#include <fmt/format.h>

#include "agent/clock_futex.h"
#include "agent/credentials.h"
#include "agent/protocol.h"
#include "agent/rendezvous.h"
#include "base/assert.h"
#include "core/thread_state.h"
#include "hotprobe/symbols.h"
#include "script/diag.h"
#include "script/maps.h"
#include "script/output.h"
#include "script/symbolize.h"
#include "sync/deferred.h"

namespace hp::agent {

using hotprobe::Errc;
using hotprobe::Error;
using hotprobe::Hit;
using hotprobe::Result;
using hp::core::OwnWork;
namespace script = hotprobe::script;

namespace {

constexpr int kDrainMs = 5;
constexpr auto kGoWait = std::chrono::seconds(10);

std::mutex g_sessions_mu;
// Never destroyed: the fork handlers and the report run until _exit, after static destructors.
std::vector<Session*>& g_sessions = *new std::vector<Session*>;
std::mutex g_compile_mu;  // Session::start's compile: the region hand-over is process-wide

// The channel's new number: where the program does not look. Programs close "every
// descriptor" up to a fixed bound (1024 is common) or up to their soft RLIMIT_NOFILE.
// With a soft limit of 4096 or more: 4032, above the fixed bounds, and low enough that the
// kernel's descriptor table stays small (each fork copies it; a number near a soft limit
// of 1M would cost 8 MiB). Below that, when the hard limit leaves room: the soft limit
// itself (raised for the one fcntl and put back), a number the program's open() never
// returns and that a loop up to the limit passes by. Else 64 below the soft limit. The
// old number is closed: the program finds its low descriptors as they would be without
// hotprobe. Programs that close every descriptor whatever the number (close_range to ~0,
// /proc/self/fd) still close it: the identity check (Session::channel_ok) catches that.
int move_channel_high(int fd) {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return fd;
  constexpr rlim_t kRoom = 64, kCap = 4096;
  const rlim_t soft = rl.rlim_cur;
  int moved = -1;
  if (soft >= kCap) {
    moved = ::fcntl(fd, F_DUPFD_CLOEXEC, static_cast<int>(kCap - kRoom));
  } else if (rl.rlim_max >= soft + kRoom) {
    rlimit raised = rl;
    raised.rlim_cur = soft + kRoom;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) {
      moved = ::fcntl(fd, F_DUPFD_CLOEXEC, static_cast<int>(soft));
      ::setrlimit(RLIMIT_NOFILE, &rl);
    }
  }
  if (moved < 0 && soft > 2 * kRoom && soft < kCap)
    moved = ::fcntl(fd, F_DUPFD_CLOEXEC, static_cast<int>(soft - kRoom));
  if (moved < 0) return fd;  // stays where it is, still checked before every use
  ::close(fd);
  return moved;
}

}  // namespace

int start_agent_thread(pthread_t* thread, void* (*entry)(void*), void* arg) {
  pthread_attr_t attr;
  if (int rc = pthread_attr_init(&attr); rc != 0) return rc;
  int rc = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  if (rc == 0) rc = pthread_attr_setstacksize(&attr, kAgentThreadStack);
  if (rc == 0) rc = pthread_create(thread, &attr, entry, arg);
  pthread_attr_destroy(&attr);
  return rc;
}

void register_session(Session* s) {
  std::scoped_lock lock(g_sessions_mu);
  g_sessions.push_back(s);
}

// g_sessions_mu, then each session's rings_mu_, are held across fork() so that the child
// finds them consistent.
// They run on the program's thread that forks: hotprobe's work there is its own (OwnWork),
// and a probe on pthread_mutex_lock must not see it.
void fork_prepare() {
  OwnWork own;
  g_sessions_mu.lock();
  for (auto* s : g_sessions)
    s->before_fork();
}
void fork_parent() {
  OwnWork own;
  for (auto* s : g_sessions)
    s->after_fork_parent();
  g_sessions_mu.unlock();
}
void fork_child() {
  OwnWork own;
  for (auto* s : g_sessions)
    s->after_fork_child();
  g_sessions_mu.unlock();
}

namespace {
// The process is ending (_exit: the atexit handlers and destructors have run): the
// session's final report. It runs as a handler, so the recursion guard already hides what
// the report calls.
void exit_hook(Hit& h) {
  auto* s = static_cast<Session*>(h.cookie);
  if (!s->in_own_process()) return;  // a vfork child's _exit: the parent traces on
  s->finish(Session::Reason::exiting, std::chrono::seconds(10));
}
// execve(path, argv, envp) and execveat(dirfd, path, argv, envp, flags): the new image is
// followed (its environment replaced by one that starts the agent there), or, when it
// cannot be, the report names what is exec'd.
void execve_hook(Hit& h) {
  auto* s = static_cast<Session*>(h.cookie);
  const auto* path = reinterpret_cast<const char*>(h.regs->arg(0));
  auto* envp = reinterpret_cast<char**>(h.regs->arg(2));
  if (char** env = s->prepare_exec(AT_FDCWD, path, envp); !env) {
    s->note_exec(AT_FDCWD, path);
  } else if (env != envp) {
    h.regs->rdx = reinterpret_cast<std::uint64_t>(env);
  }
}
void execveat_hook(Hit& h) {
  auto* s = static_cast<Session*>(h.cookie);
  const auto* path = reinterpret_cast<const char*>(h.regs->arg(1));
  auto* envp = reinterpret_cast<char**>(h.regs->arg(3));
  if (char** env = s->prepare_exec(static_cast<int>(h.regs->arg(0)), path, envp); !env) {
    s->note_exec(static_cast<int>(h.regs->arg(0)), path);
  } else if (env != envp) {
    h.regs->rcx = reinterpret_cast<std::uint64_t>(env);
  }
}
// A set*id call about to change every thread's credentials: hotprobe's threads take the
// caller's capabilities and securebits first (credentials.h).
void setxid_hook(Hit&) {
  publish_caller_credentials();
}

// The path of the agent's own file (for the LD_PRELOAD of an exec'd image).
std::string own_path() {
  Dl_info info{};
  if (::dladdr(reinterpret_cast<void*>(&execve_hook), &info) == 0 || !info.dli_fname) return {};
  char real[PATH_MAX];
  return ::realpath(info.dli_fname, real) ? std::string(real) : std::string(info.dli_fname);
}

// A descriptor number from the environment variable `name` (removed), or -1.
int fd_from_env(const char* name) {
  const char* v = env_value(name);
  if (!v) return -1;
  char* end = nullptr;
  const long fd = std::strtol(v, &end, 10);
  const bool ok = end != v && *end == '\0' && fd >= 0 && fd <= INT32_MAX;
  return ok ? static_cast<int>(fd) : -1;
}

// The whole content of descriptor `fd`, which is closed.
std::string read_all_and_close(int fd) {
  std::string out;
  char buf[4096];
  ::lseek(fd, 0, SEEK_SET);
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return out;
}
}  // namespace

Result<Session*> Session::start(int fd, bool attached_session, int exec_start_fd) {
  // Everything below is hotprobe's own work on the calling thread (the program's main
  // thread, in the preload constructor; the attach thread, which is hotprobe's for the
  // rest of its life): no probe hit runs a handler, so `uprobe:libc:malloc` does not
  // count the compile's mallocs, nor BEGIN's.
  if (attached_session) {
    // The attach thread is hotprobe's: no handler of the program runs on it.
    sigset_t all;
    hp::fill_async_signals(&all);
    sigdelset(&all, hotprobe::reserved_signal());
    pthread_sigmask(SIG_BLOCK, &all, nullptr);
    hp::core::mark_own_thread();
  }
  OwnWork own;
  // Nothing may throw into the program: memory the process no longer has (new, a
  // mapping) ends the session with its reason, and the process runs on untraced.
  std::unique_ptr<Session> s;
  Session* self = nullptr;
  try {
    return start_here(s, self, fd, attached_session, exec_start_fd);
  } catch (const std::exception& e) {
    const std::string why = std::string("hotprobe agent: ") + e.what() +
                            " in the traced process (out of memory or of mappings); the "
                            "session ends and the process runs on untraced";
    try {
      if (Session* live = s ? s.get() : self) {
        live->send_text_checked(Msg::error, why);
        if (self) {
          live->mark_finished();
          live->detach_everything();
        }
      } else {
        ::close(fd);
      }
    } catch (const std::exception&) {
      // Not even the report: hotprobe sees the channel end without one.
    }
    return Error(Errc::io_error, why);
  }
}

Result<Session*> Session::start_here(std::unique_ptr<Session>& s, Session*& self, int fd,
                                     bool attached_session, int exec_start_fd) {
  s.reset(new Session());
  fd = move_channel_high(fd);
  s->fd_ = fd;
  s->attached_ = attached_session;
  s->pid_ = ::getpid();
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode))
    return Error(Errc::io_error, "hotprobe agent: the channel to hotprobe is not a socket");
  s->chan_dev_ = st.st_dev;
  s->chan_ino_ = st.st_ino;
  pollfd p{fd, POLLIN, 0};
  std::string msg;
  int region_fd = -1;
  int got = 1;
  if (exec_start_fd >= 0) {
    // An exec'd image: the start message from the image before, the maps where it left
    // them (the run's region, taken over below).
    s->resumed_ = true;
    s->forked_child_ = env_value(kEnvExecChild) != nullptr;
    env_remove(kEnvExecChild);
    msg = read_all_and_close(exec_start_fd);
    region_fd = fd_from_env(script::SharedRegion::kEnvFd);
    env_remove(script::SharedRegion::kEnvFd);
  } else {
    // Wait for the start message (hotprobe sends it right after fork).
    if (::poll(&p, 1, 30000) != 1)
      return Error(Errc::timed_out, "hotprobe agent: no start message from hotprobe within 30 s");
    // hotprobe attach passes the session's map region with the start message.
    got = attached_session ? recv_message_with_fd(fd, msg, &region_fd) : recv_message(fd, msg);
    if (!attached_session) s->run_region_fd_ = fd_from_env(script::SharedRegion::kEnvFd);
  }
  std::unique_ptr<script::SharedRegion> region;
  if (region_fd >= 0 && s->resumed_) {
    region = script::SharedRegion::open(region_fd, nullptr);  // keeps the descriptor
  } else if (region_fd >= 0) {
    region = script::SharedRegion::open(region_fd, nullptr);
    if (region) {
      region->close_fd();  // the mapping stays; the program finds no descriptor of ours
    } else {
      ::close(region_fd);  // not a region: hotprobe finds none laid out and reads the channel
    }
  }
  if (got != 1 || msg.empty() || msg[0] != static_cast<char>(Msg::start))
    return Error(Errc::io_error, "hotprobe agent: the channel to hotprobe is broken");
  auto start_msg = decode_start(std::string_view(msg).substr(1));
  if (!start_msg) return Error(Errc::invalid_argument, "hotprobe agent: malformed start message");
  s->follow_forks_ = start_msg->options.follow_forks != 0;
  // A followed child's exec is followed too (strace -f, and bpftrace's probes on a path,
  // trace what a child becomes); HOTPROBE_FOLLOW_CHILD_EXECS=0 ends tracing there instead.
  const char* child_execs = env_value(kEnvFollowChildExecs);
  s->follow_child_execs_ =
      s->follow_forks_ && !(child_execs && child_execs[0] == '0' && child_execs[1] == '\0');
  if (!attached_session) {
    s->start_message_ = msg;
    s->exec_early_ = started_early();
    s->agent_path_ = own_path();
  }

  script::CompileOptions copts;
  copts.filename = start_msg->filename;
  copts.format = static_cast<script::OutputFormat>(start_msg->options.format);
  copts.params = start_msg->options.params;
  copts.unsafe = start_msg->options.unsafe != 0;
  s->source_ = start_msg->source;
  s->filename_ = start_msg->filename;
  // `hotprobe run` shares memory for the maps (HOTPROBE_MAPS_FD), `hotprobe attach` passed
  // a region with the start message: this compile lays them out there, so hotprobe prints
  // them however the process ends (script-runtime.md). One compile at a time: the region
  // reaches the compile's MapSet through a process-wide hand-over.
  std::unique_lock compile_lock(g_compile_mu);
  // An exec'd image takes over the maps the image before left in the run's region: its
  // counts add to theirs.
  if (s->resumed_ && region) {
    script::SharedRegion::use_next(region.get(), true, script::source_hash(start_msg->source));
  } else if (!attached_session) {
    script::adopt_shared_maps(start_msg->source);
  } else if (region) {
    script::SharedRegion::use_next(region.get(), false, script::source_hash(start_msg->source));
  }
  // ustack/usym values leave markers in the text, named by send_text_checked on the
  // reporter's side: the probed thread never symbolizes.
  script::set_symbols_deferred(true);
  auto prog = compile_open(start_msg->source, copts);
  const std::string reopen_error =
      s->resumed_ && region ? script::SharedRegion::reopen_error() : "";
  script::SharedRegion::use_next(nullptr, false, 0);  // taken, or left by a failed compile
  compile_lock.unlock();
  s->region_ = std::move(region);
  if (!prog) {
    s->send_text_checked(Msg::error, prog.error().message());
    return prog.error();
  }
  if (!reopen_error.empty()) {
    const std::string why =
        "hotprobe agent: the exec'd image cannot take over the maps of the "
        "image before: " +
        reopen_error;
    s->send_text_checked(Msg::error, why);
    return Error(Errc::invalid_argument, why);
  }
  s->program_ = std::move(*prog);
  s->program_->bind(s.get());
  if (auto r = s->attach(); !r) {
    s->send_text_checked(Msg::error, r.error().message());
    return r.error();
  }
  self = s.release();
  register_session(self);

  if (self->resumed_) {
    // BEGIN ran in the first image, and hotprobe said what was attached then. Intervals run
    // in the program only.
    if (self->forked_child_) self->intervals_.clear();
    std::string pid;
    put<std::uint32_t>(pid, static_cast<std::uint32_t>(::getpid()));
    self->send_checked(encode(Msg::resumed, pid));
    if (!self->start_reporter())
      return Error(Errc::io_error, "hotprobe agent: cannot start the reporter thread");
    return self;
  }
  // Probes as bpftrace counts them: every matched site, and BEGIN, END, intervals.
  std::size_t count = self->handles_.size();
  for (const auto& p : self->program_->probes())
    if (p.kind != script::Probe::Kind::uprobe && p.kind != script::Probe::Kind::uretprobe) ++count;
  std::string attached;
  put<std::uint32_t>(attached, static_cast<std::uint32_t>(count));
  put<std::uint32_t>(attached, static_cast<std::uint32_t>(::getpid()));
  put<std::uint32_t>(attached, self->trap_sites_);
  self->send_checked(encode(Msg::attached, attached));

  // BEGIN, its output, then wait until hotprobe has printed it: the program's own output
  // comes after.
  std::string begin_out;
  set_direct_output(&begin_out);
  self->program_->run_begin();
  set_direct_output(nullptr);
  self->send_queued();
  self->send_text_checked(Msg::output, begin_out);
  self->send_checked(encode(Msg::ready));
  if (::poll(&p, 1, static_cast<int>(std::chrono::milliseconds(kGoWait).count())) == 1 &&
      self->channel_ok()) {
    if (recv_message(fd, msg) == 1 && !msg.empty() && msg[0] == static_cast<char>(Msg::stop))
      self->requested_.store(1 + static_cast<int>(Reason::stop));
  }
  if (!self->start_reporter())
    return Error(Errc::io_error, "hotprobe agent: cannot start the reporter thread");
  return self;
}

Result<void> Session::attach() {
  auto probes = program_->probes();
  std::vector<std::size_t> index;
  for (std::size_t i = 0; i < probes.size(); ++i) {
    switch (probes[i].kind) {
      case script::Probe::Kind::uprobe:
      case script::Probe::Kind::uretprobe: {
        index.push_back(i);
        break;
      }
      case script::Probe::Kind::interval:
        intervals_.push_back(i);
        break;
      default:
        break;
    }
  }
  // Records of the program's threads that ended after their last key destructor (a hit in
  // glibc's last steps of thread exit, in an earlier session) are freed here, off the
  // dispatcher: one scan per session bounds them.
  hp::core::release_records_of_exited_threads();
  auto engine = hotprobe::options_from_environment().and_then(&hotprobe::Engine::create);
  if (!engine) return engine.error();
  engine_ = std::move(*engine);
  // The program's own specs, with no wrapper: the session gates its actions with
  // Program::set_active (one relaxed load per hit).
  std::vector<hotprobe::ProbeSpec> specs;
  for (std::size_t i : index)
    specs.push_back(program_->spec(i));
  tracing_.store(true, std::memory_order_relaxed);
  program_->set_active(true);
  const std::uint64_t traps_before = engine_->stats().sites_int3;  // the process's
  auto results = engine_->attach(specs, hotprobe::BatchMode::all_or_nothing);
  const std::uint64_t traps_after = engine_->stats().sites_int3;
  trap_sites_ =
      static_cast<std::uint32_t>(traps_after > traps_before ? traps_after - traps_before : 0);
  for (std::size_t i = 0; i < results.size(); ++i) {
    if (!results[i]) {
      // all_or_nothing: the first spec that failed for its own reason names the problem.
      auto& e = results[i].error();
      if (e.code() == Errc::busy && i + 1 < results.size()) continue;
      return Error(e.code(), render_attach_error(index[i], e));
    }
  }
  for (auto& r : results) {
    for (auto h : *r)
      handles_.push_back(h);
  }

  // The process's end: libc's _exit, the last thing the process does (exit() calls it
  // after the atexit handlers and every library's destructors, which are counted: their
  // hits reach the probes as before main). The report is taken there. A process whose _exit
  // the engine cannot place reports at exit()'s entry instead, or, without that either, in
  // the agent's destructor.
  // execve replaces the image, and the agent with it: the same final report first.
  for (const char* target : {"libc:_exit", "libc:exit", "libc:execve", "libc:execveat"}) {
    const std::string_view t = target;
    if (t == "libc:exit" && end_hooked_) continue;
    hotprobe::ProbeSpec spec;
    spec.target = target;
    spec.on_entry = t == "libc:execve"     ? &execve_hook
                    : t == "libc:execveat" ? &execveat_hook
                                           : &exit_hook;
    spec.cookie = this;
    if (auto h = engine_->attach(spec)) {
      exit_handles_.insert(exit_handles_.end(), h->begin(), h->end());
      if (t == "libc:_exit") end_hooked_ = true;
    }
  }
  // hotprobe run: a program that changes its credentials changes those of hotprobe's
  // threads with its own (one batch; a function the engine cannot place is left out).
  if (!attached_) {
    std::vector<hotprobe::ProbeSpec> setxid(std::size(kSetxidFunctions));
    for (std::size_t i = 0; i < setxid.size(); ++i) {
      setxid[i].target = kSetxidFunctions[i];
      setxid[i].on_entry = &setxid_hook;
    }
    for (auto& r : engine_->attach(setxid, hotprobe::BatchMode::best_effort))
      if (r) exit_handles_.insert(exit_handles_.end(), r->begin(), r->end());
  }
  return {};
}

bool Session::start_reporter() {
  reporter_running_.store(true);
  // The reporter takes no asynchronous signal: they stay the program's (and a SIGINT
  // handler waiting for the reporter must not run on it). Except the engine's own: a
  // reporter still removing its probes must not hold up another session's patching.
  sigset_t all, old;
  hp::fill_async_signals(&all);
  sigdelset(&all, hotprobe::reserved_signal());
  pthread_sigmask(SIG_SETMASK, &all, &old);
  // Detached: it ends after the final report; a preload session stays behind finished
  // (the process is ending), an attach session frees itself on it. Nobody joins.
  int rc = start_agent_thread(&reporter_, &Session::reporter_entry, this);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (rc != 0) {
    reporter_running_.store(false);
    return false;
  }
  // glibc installs its SIGSETXID handler at the process's first pthread_create: the relay
  // goes in front of it from here on.
  if (!attached_) (void)install_setxid_relay();
  return true;
}

void* Session::reporter_entry(void* self) {
  // hotprobe's thread: nothing it calls is the program's (intervals, END and print run
  // here with the guard set, as actions do inside a handler).
  hp::core::mark_own_thread();
  pthread_setname_np(pthread_self(), "hotprobe-agent");
  auto* s = static_cast<Session*>(self);
  try {
    s->reporter_main();
  } catch (const std::exception& e) {
    // Nothing may throw into the program (out of memory, of mappings): the session ends
    // with its reason and its probes removed; the process runs on untraced. The session
    // itself stays behind, finished.
    try {
      s->send_text_checked(Msg::error, std::string("hotprobe agent: ") + e.what() +
                                           " in the traced process; the session ends");
      s->mark_finished();
      s->detach_everything();
    } catch (const std::exception&) {
    }
  }
  return nullptr;
}

void Session::reporter_main() {
  set_direct_output(&out_);
  const auto probes = program_->probes();
  std::vector<std::uint64_t> next(intervals_.size());
  std::uint64_t t0 = now_ns();
  for (std::size_t k = 0; k < intervals_.size(); ++k)
    next[k] = t0 + std::max<std::uint64_t>(probes[intervals_[k]].interval_ns, 1000000);
  std::string msg;
  for (;;) {
    int timeout = kDrainMs;
    std::uint64_t now = now_ns();
    for (auto t : next)
      timeout = std::min<int>(timeout, t <= now ? 0 : static_cast<int>((t - now) / 1000000) + 1);
    // A request (finish, request_exit) is seen here within kDrainMs: no wake-up
    // descriptor, which the program could close and reuse.
    pollfd p{fd_, POLLIN, 0};
    // A program or a followed child that closed its descriptors (the channel among them)
    // traces on, its output kept in the rings, and gets the channel back from hotprobe's
    // rendezvous at its end (the program's thread waits for the report) or, a followed
    // child, at its exec's hand-over. Not before: the new descriptor would take a low
    // number the program may be opening.
    if (awaits_channel() && !holds_channel(fd_)) awaiting_channel_ = true;
    const bool have_channel = !awaiting_channel_ && channel_ok();
    // An exec handed over (exec_word_ 2): a stop that arrives now is the new image's to
    // read, not this one's, which is about to be replaced (an exec that failed after all
    // frees the channel again after a second).
    const bool handing_over =
        exec_word_.load(std::memory_order_acquire) == 2 && now - handover_ns_ < 1'000'000'000ull;
    int n = ::poll(&p, have_channel && !handing_over ? 1 : 0, timeout);
    if (n > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL))) {
      // Closed while polled: awaited, or lost.
      if (awaits_channel() && !holds_channel(fd_)) awaiting_channel_ = true;
      int r = awaiting_channel_ ? 2 : channel_ok() ? recv_message(fd_, msg, MSG_DONTWAIT) : -1;
      if (r == 0 || (r < 0 && errno != EAGAIN)) {
        requested_.store(1 + static_cast<int>(Reason::stop));  // hotprobe is gone
      } else if (r == 1 && !msg.empty() && msg[0] == static_cast<char>(Msg::stop)) {
        int none = 0;
        requested_.compare_exchange_strong(none, 1 + static_cast<int>(Reason::stop));
      }
    }
    if (!have_channel && !awaiting_channel_) {
      // Lost (the program closed it): nothing can be reported any more; hotprobe sees the
      // channel end without 'D' and says so. Stop tracing, leave the program untraced.
      int none = 0;
      requested_.compare_exchange_strong(none, 1 + static_cast<int>(Reason::stop));
    }
    if (exec_word_.load(std::memory_order_acquire) == 1) exec_handover();
    if (int req = requested_.load(); req != 0) {
      if (awaiting_channel_) reconnect();  // the program's thread waits for the report
      do_finish(static_cast<Reason>(req - 1));
      // Exec'ing (attach): the session, its engine and its trampolines stay, the probes
      // inactive, until the exec replaces the image (or, should the exec fail after all,
      // for the rest of the process: a hit then costs one load).
      if (attached_ && exec_path_[0]) return;
      if (attached_) {
        // Nothing refers to this session any more: its probes are gone (and no handler
        // runs), and it leaves the fork handlers' list before it is freed.
        set_direct_output(nullptr);
        bool last = false;
        {
          std::scoped_lock lock(g_sessions_mu);
          std::erase(g_sessions, this);
          last = g_sessions.empty();
        }
        reporter_running_.store(false);
        delete this;  // the engine too: the last one takes the internal probes off
        // The process's last session: the grace-period workers end once what the detach
        // queued has run, and this thread ends next. A session that starts meanwhile gets
        // a worker back on its first request.
        if (last) hp::sync::stop_idle_workers();
        return;
      }
      break;
    }
    now = now_ns();
    for (std::size_t k = 0; k < intervals_.size(); ++k) {
      if (next[k] > now) continue;
      program_->run_interval(intervals_[k]);
      next[k] += std::max<std::uint64_t>(probes[intervals_[k]].interval_ns, 1000000);
      if (next[k] <= now) next[k] = now + probes[intervals_[k]].interval_ns;
    }
    if (!awaiting_channel_) drain_and_send();
  }
  set_direct_output(nullptr);
}

// One batch: the script's probes and the exit/exec hooks; the engine then holds nothing
// of this session (Engine::detach waits for running handlers).
void Session::detach_everything() {
  std::vector<hotprobe::Handle> all = handles_;
  all.insert(all.end(), exit_handles_.begin(), exit_handles_.end());
  if (!all.empty()) (void)engine_->detach(all);
  handles_.clear();
  exit_handles_.clear();
}

void Session::do_finish(Reason reason) {
  // No action runs from here on; then END and the maps, with everything still buffered.
  tracing_.store(false, std::memory_order_relaxed);
  program_->set_active(false);
  drain_and_send();
  // END runs once, in the traced program.
  if (!forked_child_) program_->run_end();
  send_queued();  // END's output up to its last system()/cat(), and the requests
  // END's ustack/usym values are named here, as send_text_checked names them: the text
  // may go into the region, which hotprobe prints as it finds it.
  if (script::has_symbol_markers(out_)) script::expand_symbols(out_);
  // Maps in memory shared with hotprobe: END's output (all that out_ holds now) goes there
  // too and hotprobe prints both, exactly once whatever happens next. Otherwise they go
  // over the channel. (An attached session's maps are in its own region, never in a run's.)
  // A followed child's maps go as data: hotprobe merges them with PROGRAM's into one print.
  const bool shared_maps = !forked_child_ && (region_ ? script::hand_over_end_output(*region_, out_)
                                              : attached_ ? false
                                                          : script::hand_over_end_output(out_));
  if (forked_child_ && !attached_) {  // hotprobe run merges them (attach follows no fork)
    drain_and_send();
    for (const auto& m : encode_map_data(*program_->runtime().maps))
      send_checked(encode(Msg::maps, m));
  } else if (!shared_maps) {
    out_ += program_->print_maps();
  }
  drain_and_send();
  if (!shared_maps && !forked_child_) {
    if (region_) {
      script::set_maps_phase(*region_, script::region::kMapsPrinted);
    } else if (!attached_) {
      script::set_shared_maps_phase(script::region::kMapsPrinted);
    }
  }
  std::string pid;
  put<std::uint32_t>(pid, static_cast<std::uint32_t>(::getpid()));
  // Probes that never found their binary (a wrapper ran, not the program), and an exec
  // that is not followed (an attached process's: the new image has no agent): hotprobe
  // says both at the end, so that an empty output is never a silent one.
  if (!attached_ && !forked_child_) {
    for (const auto& t : never_placed())
      send_checked(encode(Msg::never, t));
  } else if (!attached_) {
    // A followed child's: what it placed is not said never placed by the program's.
    for (const auto& t : placed_targets())
      send_checked(encode(Msg::placed, t));
  }
  if (exec_path_[0]) send_checked(encode(Msg::exec, pid + exec_path_));
  if (attached_) {
    // hotprobe attach: the report is out (an exit hook waiting for it inside its handler
    // may go on, so that the detach below does not wait for it), then every probe is
    // removed, then the prompt comes back. Not when the process is exec'ing: the exec
    // removes the probes with the image, and the patching would signal the exec'ing
    // thread, a signal the new program would die of (it has no handler for it).
    mark_finished();
    if (!exec_path_[0]) detach_everything();
    send_checked(encode(Msg::done, pid));
    return;
  }
  // 'x' after the pid: the script's exit() ended the session (hotprobe run then ends the
  // program, as bpftrace ends the one its -c started).
  send_checked(encode(Msg::done, reason == Reason::exited && !forked_child_ ? pid + "x" : pid));
  mark_finished();
  // exit() and Ctrl-C: the program runs on, untraced, until hotprobe says otherwise. Remove the
  // probes (one batch) now that the report is out; at the process's end there is no point.
  if (reason == Reason::exited || reason == Reason::stop) {
    if (!handles_.empty()) {
      auto r = engine_->detach(handles_);
      (void)r;
      handles_.clear();
    }
  }
}

void Session::request_exit() {
  int none = 0;
  requested_.compare_exchange_strong(none, 1 + static_cast<int>(Reason::exited));
}

void Session::finish(Reason reason, std::chrono::milliseconds wait) noexcept {
  if (finished_.load(std::memory_order_acquire)) return;
  if (!reporter_running_.load(std::memory_order_acquire)) return;
  // On a program thread (the SIGINT handler, the destructor; the exit hook is a handler
  // already): hotprobe's work. OwnWork never allocates, so this stays signal-safe.
  OwnWork own;
  int none = 0;
  requested_.compare_exchange_strong(none, 1 + static_cast<int>(reason));
  auto deadline = now_ns() + static_cast<std::uint64_t>(wait.count()) * 1000000u;
  while (done_word_.load(std::memory_order_acquire) == 0) {
    std::uint64_t now = now_ns();
    if (now >= deadline) break;
    futex_wait(done_word_, 0, static_cast<int>((deadline - now) / 1000000) + 1);
  }
}

bool Session::in_own_process() const noexcept {
  // The system call, not getpid(): a probe on getpid must not see hotprobe's check.
  return static_cast<pid_t>(::syscall(SYS_getpid)) == pid_;
}

void Session::mark_finished() noexcept {
  finished_.store(true, std::memory_order_release);
  done_word_.store(1, std::memory_order_release);
  futex_wake_all(done_word_);
}

bool Session::channel_ok() noexcept {
  if (fd_ < 0) return false;
  if (holds_channel(fd_)) return true;
  fd_ = -1;  // closed, or another file now: not ours to use, nor to close
  channel_lost_ = true;
  // hotprobe prints the maps and says why they stop.
  if (region_) {
    script::mark_channel_lost(*region_);
  } else if (!attached_) {
    script::mark_shared_maps_channel_lost();
  }
  return false;
}

std::string Session::channel_identity() const {
  struct stat st {};
  st.st_dev = chan_dev_;
  st.st_ino = chan_ino_;
  return channel_id(st);
}

bool Session::holds_channel(int fd) const noexcept {
  struct stat st {};
  return fd >= 0 && ::fstat(fd, &st) == 0 && st.st_dev == chan_dev_ && st.st_ino == chan_ino_;
}

bool Session::awaits_channel() const noexcept {
  return !attached_ && rendezvous() != nullptr;
}

bool Session::reconnect() noexcept {
  const std::string* rv = rendezvous();
  if (!rv) return false;
  int fd = rendezvous_channel(*rv);
  if (fd < 0) return false;
  fd = move_channel_high(fd);
  if (!holds_channel(fd)) {
    ::close(fd);
    return false;
  }
  fd_ = fd;
  channel_lost_ = false;
  awaiting_channel_ = false;
  return true;
}

bool Session::send_checked(std::string_view message) {
  return channel_ok() && send_message(fd_, message);
}

bool Session::send_text_checked(Msg type, std::string_view text) {
  // ustack/usym values are named here, on the agent's output thread, not on the probed
  // thread that printed them (script/output.h, set_symbols_deferred).
  if (type == Msg::output && script::has_symbol_markers(text)) {
    std::string named(text);
    script::expand_symbols(named);
    if (!script::has_place_requests(named)) return channel_ok() && send_text(fd_, type, named);
    // show_debug_info's requests (script/symbolize.h) are named by hotprobe per message:
    // each message ends at a line's end, so a request and its frame's line stay together.
    std::string_view rest(named);
    while (!rest.empty()) {
      std::size_t n = std::min(rest.size(), kMaxMessage - 1);
      if (n < rest.size()) {
        const std::size_t nl = rest.rfind('\n', n - 1);
        if (nl != std::string_view::npos) n = nl + 1;
      }
      if (!channel_ok() || !send_text(fd_, type, rest.substr(0, n))) return false;
      rest.remove_prefix(n);
    }
    return true;
  }
  return channel_ok() && send_text(fd_, type, text);
}

void Session::before_fork() {
  rings_mu_.lock();
}

void Session::after_fork_parent() {
  rings_mu_.unlock();
}

void Session::after_fork_child() {
  // An attach session's region: the child's writes stay its own (run's region has its
  // own fork handler, script/maps.cc).
  if (region_) region_->privatize();
  // The child has one thread: this one. Rings of the other threads are theirs no more.
  for (ThreadRing* r : rings_) {
    r->ring.reset_after_fork();
    if (ring_of_this_thread(r)) {
      r->tid.store(static_cast<int>(::syscall(SYS_gettid)));  // this thread's, here
    } else {  // that thread does not exist here: its exit will never let go
      r->refs.store(1, std::memory_order_relaxed);
      r->producer_gone.store(true, std::memory_order_relaxed);
    }
  }
  rings_mu_.unlock();
  reporter_running_.store(false);
  pid_ = static_cast<pid_t>(::syscall(SYS_getpid));
  if (!follow_forks_ || finished()) {
    // Children start clean: no action runs, nothing reaches hotprobe, the channel closes.
    tracing_.store(false, std::memory_order_relaxed);
    program_->set_active(false);
    finished_.store(true, std::memory_order_relaxed);
    done_word_.store(1, std::memory_order_relaxed);
    if (channel_ok()) ::close(fd_);
    fd_ = -1;
    return;
  }
  // --follow-forks: this child reports its own output over the inherited connection,
  // with its own reporter.
  requested_.store(0);
  forked_child_ = true;
  lost_sent_ = lost_retired_ = 0;
  out_.clear();
  queued_.clear();         // the parent's, sent by the parent
  intervals_.clear();      // intervals run in the traced parent only
  program_->reset_maps();  // the child counts from zero, its maps are its own
  start_reporter();
}

Session::~Session() {
  // Only a session whose start() failed is destroyed: its reporter never ran.
  HP_ASSERT(!reporter_running_.load());
  if (engine_ && !handles_.empty()) (void)engine_->detach(handles_);
  if (engine_ && !exit_handles_.empty()) (void)engine_->detach(exit_handles_);
  for (auto* r : rings_) {
    r->session_gone.store(true, std::memory_order_release);
    ThreadRing::release(r);
  }
  if (channel_ok()) ::close(fd_);
  std::scoped_lock lock(g_sessions_mu);
  std::erase(g_sessions, this);
}

}  // namespace hp::agent
