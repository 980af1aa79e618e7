// `hotprobe run`: compile the script, start the program with the agent preloaded (and
// started before its libraries' constructors), print what the agent reports and the maps from the
// memory they share (whatever end the program met), exit with the program's status.
// docs/design/agent.md, script-runtime.md.
#include <fcntl.h>
#include <link.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <list>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "agent/map_data.h"
#include "agent/protocol.h"
#include "agent/region_maps.h"
#include "agent/rendezvous.h"
#include "cli/cli.h"
#include "cli/output_file.h"
#include "cli/preflight.h"
#include "cli/prepare.h"
#include "cli/rendezvous.h"
#include "hotprobe/probe.h"
#include "inject/inject.h"
#include "script/maps.h"
#include "script/output.h"
#include "script/program.h"
#include "script/symbolize.h"

namespace hp::cli {

namespace {

namespace agent = hp::agent;
namespace script = hotprobe::script;

int g_signal_pipe[2] = {-1, -1};

void on_signal(int sig) {
  int saved = errno;
  char c = static_cast<char>(sig);
  ssize_t r = ::write(g_signal_pipe[1], &c, 1);
  (void)r;
  errno = saved;
}

// A sanitizer-built agent needs the sanitizer's runtime first in the program's library list.
std::string sanitizer_runtime() {
#if defined(HOTPROBE_ASAN) || defined(HOTPROBE_TSAN)
#if defined(HOTPROBE_ASAN)
  const char* want = "libasan.so";
#else
  const char* want = "libtsan.so";
#endif
  struct Ctx {
    const char* want;
    std::string found;
  } ctx{want, {}};
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* p) {
        auto* c = static_cast<Ctx*>(p);
        if (info->dlpi_name && std::strstr(info->dlpi_name, c->want) && c->found.empty())
          c->found = info->dlpi_name;
        return 0;
      },
      &ctx);
  return ctx.found;
#else
  return {};
#endif
}

// When the preloaded agent starts (HOTPROBE_RUN_START, docs/design/agent.md, "The
// process's first steps"): "early" (the default) runs its initializers at the first
// constructor after libc's, under ptrace from the exec, so that the constructors of the
// program's libraries run traced; "preload" leaves it to the loader, which initializes
// it after every library it does not depend on. A sanitizer-built agent always starts
// there (its runtime initializes after libc, maybe after the first breakpoint), and so
// does the agent when the kernel refuses to let hotprobe trace its child.
std::optional<bool> early_start_wanted() {
  const char* v = std::getenv("HOTPROBE_RUN_START");
  if (!v || !*v || std::strcmp(v, "early") == 0) return sanitizer_runtime().empty();
  if (std::strcmp(v, "preload") == 0) return false;
  std::fprintf(stderr,
               "hotprobe run: HOTPROBE_RUN_START='%s' is not a way to start the agent: use "
               "'early' (before the libraries' constructors, the default) or 'preload' (where "
               "the loader initializes a preloaded library)\n",
               v);
  return std::nullopt;
}

// After the script's exit(): how long the program has to end on SIGTERM before SIGKILL.
constexpr std::chrono::seconds kEndGrace{2};

// The byte the early start's thread writes into the signal pipe when it is done.
constexpr char kEarlyDone = 0x7f;

// An early start, on a thread of its own (it is the tracer of the thread it seized: every
// ptrace call and wait for it is its own until it detaches; the main thread meanwhile
// answers the agent, which starts inside that call and waits for hotprobe's 'go'). One for
// the program's first image, one for each exec of an image started early (the program's,
// or a followed child's) while it runs.
struct EarlyStart {
  pid_t pid = 0;  // the process
  pid_t tid = 0;  // the thread seized: the one that execs
  std::thread thread;
  std::atomic<bool> running{false};
  std::optional<hp::Result<hp::inject::Report>> result;
  std::string seize_error;  // the kernel refused: the agent starts where the loader starts it
  int ended = -1;           // the process's wait status, when it ended meanwhile
  bool first = true;        // the program's first image (else an image exec'd)
  std::string image;        // that image's path
};

struct Output {
  FILE* f = stdout;
  script::OutputFormat format = script::OutputFormat::text;
  void text(std::string_view s) {
    std::string named;  // show_debug_info: the frames' places, named here
    s = script::with_source_places(s, named);
    std::fwrite(s.data(), 1, s.size(), f);
  }
  void flush() { std::fflush(f); }
};

using agent::Sender;

// --follow-forks: what a followed child that runs as another user (it dropped privileges)
// sends is marked as its own, line by line: text "[pid N] LINE" with LINE escaped again (a
// child can write to the channel without its agent), json {"type": "child", "pid": N,
// "data": "LINE"}. Its maps are not merged into PROGRAM's: they print alone, marked.
class ChildOutput {
 public:
  explicit ChildOutput(script::OutputFormat format) : format_(format) {}
  // Marked text of `pid`'s `text`; a line it does not end waits for the rest.
  std::string mark(std::uint32_t pid, std::string_view text) {
    std::string& partial = partial_[pid];
    partial.append(text);
    std::string out;
    std::size_t start = 0;
    for (std::size_t nl; (nl = partial.find('\n', start)) != std::string::npos; start = nl + 1)
      mark_line(out, pid, std::string_view(partial).substr(start, nl - start));
    partial.erase(0, start);
    return out;
  }
  // The lines that never ended.
  std::string finish() {
    std::string out;
    for (auto& [pid, partial] : partial_)
      if (!partial.empty()) mark_line(out, pid, partial);
    partial_.clear();
    return out;
  }

 private:
  void mark_line(std::string& out, std::uint32_t pid, std::string_view line) {
    if (format_ == script::OutputFormat::json) {
      out += fmt::format("{{\"type\": \"child\", \"pid\": {}, \"data\": \"", pid);
      script::json_escape(out, line);
      out += "\"}\n";
    } else {
      out += fmt::format("[pid {}] ", pid);
      script::append_text_escaped(out, line);
      out += "\n";
    }
  }
  script::OutputFormat format_;
  std::map<std::uint32_t, std::string> partial_;
};

int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return kExitError;
}

// The program's maps, in memory it shares with hotprobe (docs/design/script-runtime.md,
// "Maps shared with hotprobe"): printed here exactly once, after the agent's final report
// (which ran END), or when the program ended without one: then END runs here, as bpftrace
// runs it in its own process.
// --follow-forks: each child's maps arrive as data at its end (Msg::maps) and are merged
// into PROGRAM's print; a child that ends after that print has its maps printed alone.
struct SharedMaps {
  std::unique_ptr<script::SharedRegion> region;
  std::unique_ptr<agent::OpenProgram> layout;  // private maps: the descs to decode with
  agent::MapRows children;                     // rows of followed children, not printed yet
  bool children_pending = false;
  bool printed = false;
  bool recovered = false;     // printed here from the region, without the agent's report
  bool channel_lost = false;  // the agent lost its channel and stopped tracing then

  class TextSink final : public script::Sink {
   public:
    explicit TextSink(script::OutputFormat f) : format(f) {}
    void write(std::string_view t) override { text.append(t); }
    void request_exit() override {}
    // END runs here: its system() and cat() run here too, in order with its output.
    void request(Request kind, std::string_view t) override {
      text += run_command_request(std::string(1, static_cast<char>(kind)).append(t), format);
    }
    script::OutputFormat format;
    std::string text;
  };

  // A child's maps (one payload); false when malformed.
  bool add_child(std::string_view payload) {
    if (!layout) return false;
    auto& set = *layout->runtime().maps;
    if (children.size() != set.size()) children.resize(set.size());
    children_pending = true;
    return agent::decode_map_data(payload, set, children);
  }
  // The maps of a child that runs as another user: kept apart, printed marked as its own.
  std::map<std::uint32_t, agent::MapRows> marked;
  bool add_marked(std::uint32_t pid, std::string_view payload) {
    if (!layout) return false;
    auto& rows = marked[pid];
    if (rows.size() != layout->runtime().maps->size()) rows.resize(layout->runtime().maps->size());
    return agent::decode_map_data(payload, *layout->runtime().maps, rows);
  }
  // `pid`'s maps (all children's when 0), marked.
  void print_marked(Output& out, ChildOutput& marks, std::uint32_t pid = 0) {
    if (!layout) return;
    for (auto it = marked.begin(); it != marked.end();) {
      if (pid != 0 && it->first != pid) {
        ++it;
        continue;
      }
      std::string text = agent::print_merged(*layout->runtime().maps, out.format, it->second);
      text.erase(0, text.find_first_not_of('\n'));  // the blank lines before a dump
      out.text(marks.mark(it->first, text));
      it = marked.erase(it);
    }
  }

  // The children's rows not merged into PROGRAM's print: printed alone, merged together.
  void print_children(Output& out) {
    if (!children_pending || !layout) return;
    out.text(agent::print_merged(*layout->runtime().maps, out.format, children));
    for (auto& c : children)
      c.clear();
    children_pending = false;
  }

  void print(Output& out, const std::string& source, const script::CompileOptions& copts,
             bool run_end) {
    if (!region || printed) return print_children(out);
    const script::region::Header& h = region->header();
    if (h.state.load(std::memory_order_acquire) != 1) return;  // the agent laid out nothing
    printed = true;
    const std::uint32_t phase = h.phase.load(std::memory_order_acquire);
    channel_lost = h.channel_lost.load(std::memory_order_acquire) != 0;
    if (phase == script::region::kMapsPrinted) return print_children(out);  // sent by the agent
    script::SharedRegion::use_next(region.get(), /*reopen=*/true, script::source_hash(source));
    auto prog = agent::compile_open(source, copts);
    if (!prog) {  // it compiled before the program started; a file it names may be gone
      std::fprintf(stderr, "hotprobe run: cannot print the maps the program left: %s\n",
                   prog.error().message().c_str());
      return;
    }
    if (std::string why = script::SharedRegion::reopen_error(); !why.empty()) {
      std::fprintf(stderr, "hotprobe run: cannot read the maps the program left: %s\n",
                   why.c_str());
      return;
    }
    TextSink sink(out.format);
    (*prog)->bind(&sink);
    if (phase == script::region::kEndDone) {  // END ran in the program: its output
      if (region->contains(h.end_text_off, h.end_text_len))
        sink.text.assign(region->at<char>(h.end_text_off), h.end_text_len);
    } else if (run_end) {
      (*prog)->run_end();
    }
    sink.text += agent::print_merged(*(*prog)->runtime().maps, out.format, children);
    for (auto& c : children)
      c.clear();
    children_pending = false;
    out.text(sink.text);
    recovered = true;
    if (auto refused = h.refused.load(std::memory_order_relaxed); refused > 0) {
      std::fprintf(stderr,
                   "hotprobe run: the memory the maps share with the program (%zu MiB) ran out: "
                   "%llu tables or records stayed in the program's own memory, so maps printed "
                   "after an abnormal end may miss entries; raise HOTPROBE_MAP_MEMORY (MiB) or "
                   "use fewer keys\n",
                   region->size() >> 20, static_cast<unsigned long long>(refused));
    }
  }
};

std::string real_path(const std::string& p) {
  char buf[PATH_MAX];
  return ::realpath(p.c_str(), buf) ? std::string(buf) : p;
}

// "#!INTERP ..." of a script, or empty.
std::string interpreter_of(const std::string& program) {
  std::ifstream in(program);
  std::string line;
  if (!in || !std::getline(in, line) || !line.starts_with("#!")) return {};
  line = line.substr(2);
  const auto b = line.find_first_not_of(" \t");
  if (b == std::string::npos) return {};
  line = line.substr(b);
  return line.substr(0, line.find_first_of(" \t\r"));
}

// Never silent about what was not traced: a probe whose binary never loaded in PROGRAM (a
// wrapper ran instead, or a forked child exec'd the binary), every exec that was not
// followed (a forked child's), and every followed exec whose new image the agent did not
// start in (`lost`: a static or set-ID program, or a channel closed without a way back).
void warn_untraced(const std::string& program, const std::vector<std::string>& never,
                   const std::vector<std::pair<std::uint32_t, std::string>>& execs,
                   const std::vector<std::pair<std::uint32_t, std::string>>& lost) {
  for (const auto& [pid, path] : lost) {
    std::string why = preload_refusal(path);
    if (why.empty()) {
      why =
          "its agent could not reach hotprobe (the process had closed hotprobe's channel "
          "before the exec, and the rendezvous did not give it back: "
          "HOTPROBE_RUN_RENDEZVOUS=0, or a process outside the traced tree)";
    }
    std::fprintf(stderr,
                 "hotprobe run: pid %u exec'd '%s', and the agent did not start in the new image: "
                 "%s; it ran untraced, and the maps hold what was counted before the exec\n",
                 pid, path.c_str(), why.c_str());
  }
  std::vector<bool> said(execs.size());
  const std::string interp = interpreter_of(program);
  for (const auto& target : never) {
    const std::string module = target.substr(0, target.rfind(':'));
    std::string why;
    for (std::size_t i = 0; i < execs.size() && why.empty(); ++i) {
      if (module.find('/') == std::string::npos || real_path(module) != real_path(execs[i].second))
        continue;
      said[i] = true;
      why = fmt::format(
          "'{}' ran in a program that pid {} exec'd, and hotprobe follows the execs of the "
          "program it runs, not those of its forked children: run hotprobe on it directly "
          "(hotprobe run ... -- {} ARGS)",
          execs[i].second, execs[i].first, execs[i].second);
    }
    if (why.empty() && !interp.empty()) {
      why = fmt::format(
          "'{}' is a script run by '{}' (a wrapper, as pyenv's shims are): the program it "
          "starts is not traced; run hotprobe on the real binary ({}; for a pyenv shim, "
          "`readlink -f $(pyenv which python3)` names it)",
          program, interp,
          module.find('/') != std::string::npos ? "hotprobe run ... -- " + real_path(module)
                                                : std::string("`readlink -f` of its path"));
    }
    if (why.empty()) {
      why = fmt::format(
          "'{}' never loaded '{}': check that it is the binary the program runs or a library "
          "it loads (ldd '{}')",
          program, module, program);
    }
    std::fprintf(stderr, "hotprobe run: the probe on '%s' never attached during the run: %s\n",
                 target.c_str(), why.c_str());
  }
  for (std::size_t i = 0; i < execs.size(); ++i) {
    if (!said[i]) {
      std::fprintf(stderr,
                   "hotprobe run: pid %u exec'd '%s', which ran untraced (hotprobe follows the "
                   "execs of the program it runs, not those of its forked children; run "
                   "hotprobe on it directly to trace it)\n",
                   execs[i].first, execs[i].second.c_str());
    }
  }
}

}  // namespace

int run(const RunOptions& o) {
  // Errors before the program starts: the script is compiled here first.
  auto loaded = load_script("run", o.script_text, o.script_file, o.format, o.params, o.unsafe);
  if (!loaded) return kExitError;
  const std::string& source = loaded->source;
  const std::string& filename = loaded->filename;
  const script::CompileOptions& copts = loaded->copts;

  std::string program = find_in_path(o.command[0]);
  if (program.empty()) {
    std::fprintf(stderr, "hotprobe run: '%s': command not found in PATH\n", o.command[0].c_str());
    return kExitError;
  }
  if (!preflight_program(program)) return kExitError;  // before it starts, or never
  // The engine's settings (HOTPROBE_SIGNAL, ...) reach the agent in the program's
  // environment: a bad value is refused here, before the program starts.
  if (auto settings = hotprobe::options_from_environment(); !settings) {
    std::fprintf(stderr, "hotprobe run: %s\n", settings.error().message().c_str());
    return kExitError;
  }
  std::string agent_path = find_agent();
  if (agent_path.empty()) {
    std::fprintf(stderr,
                 "hotprobe run: cannot find libhotprobe_agent.so next to hotprobe or in "
                 "../%s; set HOTPROBE_AGENT to its path\n",
                 HOTPROBE_AGENT_FROM_BIN);
    return kExitError;
  }

  std::size_t map_bytes;
  if (!agent::map_region_bytes("run", map_bytes)) return kExitError;

  Output out;
  out.format = copts.format;
  if (!o.output.empty()) {
    out.f = open_output_file(o.output);
    if (!out.f) {
      std::fprintf(stderr, "hotprobe run: cannot write '%s': %s\n", o.output.c_str(),
                   std::strerror(errno));
      return kExitError;
    }
  }

  SharedMaps maps;
  if (auto layout = agent::compile_open(source, copts)) maps.layout = std::move(*layout);
  // HOTPROBE_SHARED_MAPS=0: the maps travel over the channel only (the agent prints them at
  // a normal end, nothing survives another end); tests compare the two ways with it.
  if (agent::shared_maps_wanted()) {
    std::string why;
    maps.region = script::SharedRegion::create(map_bytes, &why);
    if (!maps.region) {
      std::fprintf(stderr,
                   "hotprobe run: cannot make the memory the maps share with the program (%s); "
                   "the maps print only if the program ends normally\n",
                   why.c_str());
    }
  }

  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0 ||
      ::pipe2(g_signal_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
    std::fprintf(stderr, "hotprobe run: socketpair: %s\n", std::strerror(errno));
    return kExitError;
  }
  int bufsize = 1 << 20;
  const int one = 1;  // each message says its sender (agent::recv_message_from)
  const bool creds = ::setsockopt(sv[0], SOL_SOCKET, SO_PASSCRED, &one, sizeof one) == 0;
  ::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof bufsize);
  ::setsockopt(sv[0], SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof bufsize);
  // Where an image whose inherited channel is gone gets it back (agent/rendezvous.h).
  Rendezvous rendezvous(Rendezvous::wanted() ? sv[1] : -1);
  struct stat channel_st {};
  const std::string channel_id =
      ::fstat(sv[1], &channel_st) == 0 ? agent::channel_id(channel_st) : std::string();

  struct sigaction sa {};
  sa.sa_handler = &on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGCHLD})
    sigaction(sig, &sa, nullptr);

  const std::optional<bool> early_wanted = early_start_wanted();
  if (!early_wanted) return kExitError;
  // The child waits before its execve for hotprobe's 'G' (sent once hotprobe traces it,
  // for the early start).
  int gate[2];
  if (::pipe2(gate, O_CLOEXEC) != 0) {
    std::fprintf(stderr, "hotprobe run: pipe: %s\n", std::strerror(errno));
    return kExitError;
  }
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) {
    std::fprintf(stderr, "hotprobe run: fork: %s\n", std::strerror(errno));
    return kExitError;
  }
  if (pid == 0) {
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGCHLD})
      sigaction(sig, &dfl, nullptr);
    ::close(gate[1]);
    char go = 0;
    while (::read(gate[0], &go, 1) < 0 && errno == EINTR) {
    }
    if (go != 'G') ::_exit(kExitError);   // hotprobe is gone
    int fd = ::fcntl(sv[1], F_DUPFD, 3);  // without O_CLOEXEC: the program inherits it
    const char* user = std::getenv("LD_PRELOAD");
    std::string preload = agent_path;
    if (auto rt = sanitizer_runtime(); !rt.empty()) preload = rt + ":" + preload;
    if (user && *user) {
      ::setenv(agent::kEnvSavedPreload, user, 1);
      preload += ":";
      preload += user;
    } else {
      ::unsetenv(agent::kEnvSavedPreload);
    }
    ::setenv("LD_PRELOAD", preload.c_str(), 1);
    ::setenv(agent::kEnvFd, std::to_string(fd).c_str(), 1);
    if (!channel_id.empty()) ::setenv(agent::kEnvChannelId, channel_id.c_str(), 1);
    if (!rendezvous.name().empty()) ::setenv(agent::kEnvRendezvous, rendezvous.name().c_str(), 1);
    if (maps.region) {  // the agent's MapSet lays the maps out there
      int mfd = ::fcntl(maps.region->fd(), F_DUPFD, 3);
      ::setenv(script::SharedRegion::kEnvFd, std::to_string(mfd).c_str(), 1);
    }
    std::vector<char*> argv;
    for (const auto& a : o.command)
      argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(program.c_str(), argv.data());
    int e = errno;
    std::fprintf(stderr, "hotprobe run: cannot run '%s': %s\n", program.c_str(), std::strerror(e));
    ::_exit(e == ENOENT ? 127 : 126);
  }
  ::close(sv[1]);
  ::close(gate[0]);
  std::list<EarlyStart> starts;  // stable addresses: each thread has its own
  bool seize_refused = false;    // the program could not be traced: no image starts early
  bool program_over = false;     // the program ended: hotprobe reports and returns
  // The program's image (first = true: the child held before its first execve by the
  // gate), or an image an exec makes (the exec'ing thread waits before the execve until
  // it is traced; an exec that happened before the seize is let go after the exec timeout).
  const auto start_early = [&](bool first, pid_t in, pid_t thread, std::string image) {
    EarlyStart& early = starts.emplace_back();
    early.pid = in;
    early.tid = thread;
    early.running = true;
    early.first = first;
    early.image = std::move(image);
    early.thread = std::thread([&, first] {
      auto seized = hp::inject::seize_child(early.tid);
      if (first) {
        (void)!::write(gate[1], "G", 1);
        ::close(gate[1]);
      }
      if (!seized.ok()) {
        early.seize_error = seized.error().message();
      } else {
        hp::inject::Options io;
        // The call returns once the agent's session has started (compiled, attached, BEGIN
        // printed): as long as that takes.
        io.timeout = std::chrono::minutes(10);
        io.tid = early.tid;
        if (!first) io.exec_timeout = std::chrono::seconds(3);
        early.result = hp::inject::start_preloaded_library(
            early.pid, agent_path, "hotprobe_agent_init_early", io, &early.ended);
        if (std::getenv("HOTPROBE_DEBUG") && early.result->ok()) {
          std::fprintf(stderr,
                       "hotprobe run: agent in %s (pid %d) started at the first constructor of "
                       "%s (%.1f ms)\n",
                       early.image.c_str(), early.pid, (*early.result)->start_object.c_str(),
                       (*early.result)->pause_ms);
        }
      }
      early.running = false;
      (void)!::write(g_signal_pipe[1], &kEarlyDone, 1);
    });
  };
  // Whether a start on the program's own process runs: its thread waits for the program's
  // stops, which the main thread's waitpid must not take.
  const auto tracing_program = [&] {
    return std::any_of(starts.begin(), starts.end(),
                       [&](const EarlyStart& e) { return e.running && e.pid == pid; });
  };
  if (*early_wanted) {
    start_early(true, pid, pid, program);
  } else {
    (void)!::write(gate[1], "G", 1);
    ::close(gate[1]);
  }
  int sock = sv[0];
  agent::StartOptions so;
  so.format = static_cast<std::uint8_t>(copts.format);
  so.params = copts.params;
  so.unsafe = copts.unsafe;
  so.follow_forks = o.follow_forks ? 1 : 0;
  agent::send_message(sock, agent::encode_start(so, filename, source));

  bool attached = false, agent_error = false, stop_sent = false, child_done = false;
  bool done_seen = false;  // the program's final report ('D' with its pid) arrived
  // The script's exit() ended the session: hotprobe ends the program (SIGTERM, then
  // SIGKILL after kEndGrace), and its death of those is not an error of the run.
  bool ending_program = false, killed_program = false;
  std::chrono::steady_clock::time_point end_deadline;
  std::vector<std::string> never;                            // probes whose binary never loaded
  std::vector<std::pair<std::uint32_t, std::string>> execs;  // pid, path exec'd
  // Execs the agent follows: pid and path, until the new image's agent says 'resumed'.
  std::vector<std::pair<std::uint32_t, std::string>> following;
  std::vector<std::string> placed;  // targets placed in an image that exec'd since
  bool bad_map_data = false;
  std::uint64_t lost = 0;
  int status = 0;
  std::string msg;
  Sender from;
  ChildOutput marks(out.format);
  // Processes of the traced tree that may have the channel back from the rendezvous: the
  // program's descendants, and those that sent over the channel or were named in a
  // hand-over (an orphan, whose parent is no longer in the tree).
  std::vector<pid_t> channel_holders{pid};
  const auto may_have_channel = [&](pid_t p) {
    return std::find(channel_holders.begin(), channel_holders.end(), p) != channel_holders.end() ||
           hp::inject::is_descendant(p, pid);
  };
  const auto note_holder = [&](pid_t p) {
    if (p > 0 &&
        std::find(channel_holders.begin(), channel_holders.end(), p) == channel_holders.end())
      channel_holders.push_back(p);
  };
  // A followed child that runs as another user than hotprobe (it dropped privileges):
  // what it sends is its own, never hotprobe's or PROGRAM's.
  auto other_user = [&] {
    if (!creds) return false;
    if (!from.known) return true;
    return from.pid != static_cast<std::uint32_t>(pid) &&
           (from.uid != ::getuid() || from.gid != ::getgid());
  };
  auto handle_marked = [&](const std::string& m) {
    std::string_view payload = std::string_view(m).substr(1);
    switch (static_cast<agent::Msg>(m[0])) {
      case agent::Msg::output:
        out.text(marks.mark(from.pid, payload));
        break;
      case agent::Msg::error: {
        std::string e;
        script::append_text_escaped(e, payload);
        std::fprintf(stderr,
                     "hotprobe run: pid %u, a followed child running as uid %u, reported: %s\n",
                     from.pid, from.uid, e.c_str());
        break;
      }
      case agent::Msg::maps:
        if (!maps.add_marked(from.pid, payload)) bad_map_data = true;
        break;
      case agent::Msg::done:
        maps.print_marked(out, marks, from.pid);
        break;
      case agent::Msg::placed:
        placed.emplace_back(payload);
        break;
      case agent::Msg::exec: {
        std::size_t pos = 0;
        if (agent::get<std::uint32_t>(payload, pos))
          execs.emplace_back(from.pid, std::string(payload.substr(pos)));
        break;
      }
      default:  // PROGRAM's own messages: not a child's to send
        break;
    }
  };
  auto handle = [&](const std::string& m) {
    if (m.empty()) return;
    if (other_user()) return handle_marked(m);
    std::string_view payload = std::string_view(m).substr(1);
    std::size_t pos = 0;
    switch (static_cast<agent::Msg>(m[0])) {
      case agent::Msg::attached: {
        attached = true;
        auto n = agent::get<std::uint32_t>(payload, pos).value_or(0);
        (void)agent::get<std::uint32_t>(payload, pos);  // the pid
        if (auto traps = agent::get<std::uint32_t>(payload, pos).value_or(0))
          std::fputs(agent::trap_sites_warning(traps).c_str(), stderr);
        if (out.format == script::OutputFormat::json) {
          out.text(
              fmt::format("{{\"type\": \"attached_probes\", \"data\": {{\"probes\": {}}}}}\n", n));
        } else {
          out.text(fmt::format("Attaching {} probe{}...\n", n, n == 1 ? "" : "s"));
        }
        break;
      }
      case agent::Msg::error: {
        agent_error = true;
        std::string e(payload);
        if (!e.empty() && e.back() != '\n') e += '\n';
        std::fputs(e.c_str(), stderr);
        break;
      }
      case agent::Msg::output:
        out.text(payload);
        break;
      case agent::Msg::command:          // system(), cat(): run here, never in the traced process
        if (payload.starts_with("w")) {  // a runtime warning: stderr, as bpftrace's
          out.flush();
          std::fwrite(payload.data() + 1, 1, payload.size() - 1, stderr);
        } else if (copts.unsafe &&
                   request_from_own_user(from.known ? static_cast<pid_t>(from.pid) : pid,
                                         from.known ? static_cast<long>(from.uid) : -1, "run"))
          out.text(run_command_request(payload, out.format));
        break;
      case agent::Msg::lost:
        lost += agent::get<std::uint64_t>(payload, pos).value_or(0);
        break;
      case agent::Msg::ready:
        out.flush();
        agent::send_message(sock, agent::encode(stop_sent ? agent::Msg::stop : agent::Msg::go));
        break;
      case agent::Msg::done:
        if (agent::get<std::uint32_t>(payload, pos).value_or(0) ==
            static_cast<std::uint32_t>(pid)) {
          done_seen = true;
          // The script's exit(): the program ends, as the one bpftrace's -c started does
          // (SIGTERM once the report is out; SIGKILL if it is still there kEndGrace later).
          if (payload.substr(pos) == "x" && !child_done && !ending_program) {
            ending_program = true;
            end_deadline = std::chrono::steady_clock::now() + kEndGrace;
            ::kill(pid, SIGTERM);
          }
          // The program's final report is out (END ran there): its maps now, with those of
          // the children that ended before it.
          if (attached && !agent_error) maps.print(out, source, copts, /*run_end=*/false);
        } else if (maps.printed || !maps.region) {
          maps.print_children(out);  // a child that ended after PROGRAM's print
        }
        break;
      case agent::Msg::maps:
        if (!maps.add_child(payload)) bad_map_data = true;
        break;
      case agent::Msg::never:
        if (std::find(never.begin(), never.end(), payload) == never.end())
          never.emplace_back(payload);
        break;
      case agent::Msg::placed:
        placed.emplace_back(payload);
        break;
      case agent::Msg::exec: {
        auto p = agent::get<std::uint32_t>(payload, pos).value_or(0);
        execs.emplace_back(p, std::string(payload.substr(pos)));
        break;
      }
      case agent::Msg::followed: {
        auto p = agent::get<std::uint32_t>(payload, pos).value_or(0);
        auto tid = agent::get<std::uint32_t>(payload, pos).value_or(0);
        auto n = agent::get<std::uint32_t>(payload, pos).value_or(0);
        if (pos + n > payload.size()) break;
        std::string image(payload.substr(pos, n));
        pos += n;
        note_holder(static_cast<pid_t>(p));
        // An exec from an image started early (the program's or a followed child's): the
        // new image is too (the exec'ing thread waits until hotprobe traces it).
        if (*early_wanted && !seize_refused && !program_over && p > 0 && tid > 0)
          start_early(false, static_cast<pid_t>(p), static_cast<pid_t>(tid), image);
        following.emplace_back(p, std::move(image));
        while (pos < payload.size()) {
          const std::size_t end = std::min(payload.find('\0', pos), payload.size());
          placed.emplace_back(payload.substr(pos, end - pos));
          pos = end + 1;
        }
        break;
      }
      case agent::Msg::resumed: {
        auto p = agent::get<std::uint32_t>(payload, pos).value_or(0);
        std::erase_if(following, [&](const auto& f) { return f.first == p; });
        break;
      }
      default:
        break;
    }
  };

  const auto reap = [&] {
    if (child_done) return;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) child_done = true;
    if (r < 0 && errno == ECHILD) {  // reaped elsewhere, its status unknown: never wait forever
      status = kExitError << 8;
      child_done = true;
    }
  };
  while (!child_done) {
    pollfd p[3] = {{sock, POLLIN, 0}, {g_signal_pipe[0], POLLIN, 0}, {rendezvous.fd(), POLLIN, 0}};
    int wait_ms = -1;
    if (ending_program) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          end_deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0 && !killed_program) {
        ::kill(pid, SIGKILL);
        killed_program = true;
      }
      wait_ms = killed_program ? -1 : static_cast<int>(left.count()) + 1;
    }
    int n = ::poll(p, 3, wait_ms);
    if (n < 0 && errno != EINTR) break;
    if (p[2].revents & POLLIN) rendezvous.serve(may_have_channel);
    if (p[1].revents & POLLIN) {
      char sigs[64];
      ssize_t k = ::read(g_signal_pipe[0], sigs, sizeof sigs);
      for (ssize_t i = 0; i < k; ++i) {
        const int sig = static_cast<unsigned char>(sigs[i]);
        if (sig == kEarlyDone) {
          // Each start's outcome once it is done, said once.
          for (auto it = starts.begin(); it != starts.end();) {
            EarlyStart& early = *it;
            if (early.running) {
              ++it;
              continue;
            }
            if (early.thread.joinable()) early.thread.join();
            const bool program_ended = early.pid == pid && early.ended >= 0;
            if (!early.seize_error.empty()) {
              if (early.first) seize_refused = true;
              std::fprintf(stderr,
                           "hotprobe run: %s; the agent in '%s' starts after the constructors "
                           "of its libraries, and their calls are not counted\n",
                           early.seize_error.c_str(), early.image.c_str());
            } else if (early.result && !early.result->ok() && program_ended) {
              status = early.ended;  // it ended first (an execve that failed, a crash)
              child_done = true;
            } else if (early.result && !early.result->ok() && early.ended < 0 &&
                       (early.first ||
                        early.result->error().code() != hotprobe::Errc::unsupported)) {
              // The agent is preloaded all the same: it starts where the loader initializes
              // it. (An exec'd static image is said below, with what ran untraced; a
              // followed child that ended is its parent's to report.)
              std::fprintf(stderr,
                           "hotprobe run: cannot start the agent in '%s' before its libraries' "
                           "constructors (%s): it starts after them, and their calls are not "
                           "counted\n",
                           early.image.c_str(), early.result->error().message().c_str());
            }
            it = starts.erase(it);
          }
          if (!tracing_program()) reap();
        } else if (sig == SIGCHLD) {
          // An early start's thread traces the program until it detaches: its stops are its
          // own.
          if (!tracing_program()) reap();
        } else {
          // Ctrl-C: the program got it from the terminal too; tracing stops, maps print.
          // Other ends: passed on to the program, which decides.
          if (sig != SIGINT) ::kill(pid, sig);
          if (!stop_sent && sock >= 0) agent::send_message(sock, agent::encode(agent::Msg::stop));
          stop_sent = true;
        }
      }
    }
    if (sock >= 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
      int r = agent::recv_message_from(sock, msg, from, MSG_DONTWAIT);
      if (r == 1) {
        if (from.known) note_holder(static_cast<pid_t>(from.pid));
        handle(msg);
        out.flush();
      } else if (r == 0 || (r < 0 && errno != EAGAIN)) {
        ::close(sock);  // every process that held the channel is gone or closed it
        sock = -1;
      }
    }
  }
  // A start still running (a followed child's exec as the program ended) needs the channel
  // answered until it is done; no new one begins (an exec after this one goes ahead
  // without it once its wait for hotprobe ends).
  program_over = true;
  const auto any_running = [&] {
    return std::any_of(starts.begin(), starts.end(),
                       [](const EarlyStart& e) { return e.running.load(); });
  };
  while (sock >= 0 && any_running()) {
    pollfd p[2] = {{sock, POLLIN, 0}, {rendezvous.fd(), POLLIN, 0}};
    if (::poll(p, 2, 20) <= 0) continue;
    if (p[1].revents & POLLIN) rendezvous.serve(may_have_channel);
    if (agent::recv_message_from(sock, msg, from, MSG_DONTWAIT) == 1) {
      handle(msg);
      out.flush();
    }
  }
  for (EarlyStart& e : starts)
    if (e.thread.joinable()) e.thread.join();
  // What the program's agent sent before it ended is in the socket: print it all.
  while (sock >= 0 && agent::recv_message_from(sock, msg, from, MSG_DONTWAIT) == 1)
    handle(msg);
  // Ended without a final report (a signal, exit_group, SIGKILL): the maps from memory.
  if (attached && !agent_error) maps.print(out, source, copts, /*run_end=*/true);
  maps.print_children(out);
  maps.print_marked(out, marks);
  out.text(marks.finish());
  if (lost > 0) {
    if (out.format == script::OutputFormat::json) {
      out.text(fmt::format("{{\"type\": \"lost_events\", \"data\": {{\"events\": {}}}}}\n", lost));
    } else {
      out.text(fmt::format("Lost {} events\n", lost));
    }
  }
  out.flush();
  if (out.f != stdout) std::fclose(out.f);
  if (sock >= 0) ::close(sock);
  int code = exit_code(status);
  if (ending_program && WIFSIGNALED(status) &&
      (WTERMSIG(status) == SIGTERM || WTERMSIG(status) == SIGKILL))
    code = 0;  // as bpftrace, whose exit() ends its -c child
  if (agent_error) return kExitError;
  if (bad_map_data) {
    std::fprintf(stderr,
                 "hotprobe run: a forked child sent maps that do not match the script: they were "
                 "left out of the maps above\n");
  }
  std::erase_if(never, [&](const std::string& t) {
    return std::find(placed.begin(), placed.end(), t) != placed.end();
  });
  warn_untraced(program, never, execs, following);
  if (maps.channel_lost) {
    std::fprintf(stderr,
                 "hotprobe run: '%s' closed hotprobe's channel to its agent, which stopped "
                 "tracing then: the maps above hold what was counted until that moment\n",
                 program.c_str());
    return code != 0 ? code : kExitError;
  }
  // The maps came from the shared memory (a raw exit_group): nothing was lost, and the
  // status is the program's.
  if (attached && !done_seen && WIFEXITED(status) && !maps.recovered) {
    std::fprintf(stderr,
                 "hotprobe run: the channel to the agent in '%s' ended before its final report "
                 "(the program closed hotprobe's descriptor, or ended through a raw exit_group "
                 "system call): the maps were not printed\n",
                 program.c_str());
    return code != 0 ? code : kExitError;
  }
  // The program ran untraced (it, or a program it exec'ed, ignores LD_PRELOAD): said, and
  // the status stays the program's (the preflight refuses the cases it can see first).
  if (!attached && code != 126 && code != 127) {
    std::fprintf(stderr,
                 "hotprobe run: the agent did not start in '%s' (a static or set-ID program "
                 "ignores LD_PRELOAD): it ran untraced; its exit status is passed through\n",
                 program.c_str());
    return code;
  }
  return code;
}

}  // namespace hp::cli
