// The run pass: loops and the small builtins (run_misc.h).
#include "script/run_misc.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/sysinfo.h>
#include <unistd.h>
#include <x86intrin.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>

#include "script/layout.h"
#include "script/loops.h"
#include "script/lower.h"
#include "script/run_nodes.h"
#include "script/run_stack.h"
#include "script/run_thread.h"

namespace hotprobe::script::nodes {

namespace {

int g_ncpus __attribute__((visibility("hidden"))) = 1;
char g_username[kStrBytes] __attribute__((visibility("hidden"))) = {};
std::uint32_t g_username_len __attribute__((visibility("hidden"))) = 0;

// rand's state, per thread (0: not seeded yet).
constinit thread_local std::uint64_t t_rand __attribute__((tls_model("initial-exec"))) = 0;

std::uint32_t copy_out(char* out, std::string_view s) {
  const std::size_t n = std::min<std::size_t>(s.size(), kStrBytes - 1);
  std::memcpy(out, s.data(), n);
  out[n] = '\0';
  return static_cast<std::uint32_t>(n);
}

}  // namespace

// The name of `uid` in /etc/passwd, read as a file: not through NSS, whose modules a
// lookup would load into the traced program. "" when it is not there.
static std::string passwd_name(uid_t uid) {
  const int fd = ::open("/etc/passwd", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  std::string text;
  char buf[4096];
  for (ssize_t n; text.size() < (1u << 20) && (n = ::read(fd, buf, sizeof buf)) > 0;)
    text.append(buf, static_cast<std::size_t>(n));
  ::close(fd);
  const std::string want = std::to_string(uid);
  for (std::size_t start = 0; start < text.size();) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string_view line(text.data() + start, end - start);
    start = end + 1;
    const std::size_t c1 = line.find(':');
    const std::size_t c2 = c1 == std::string_view::npos ? c1 : line.find(':', c1 + 1);
    const std::size_t c3 = c2 == std::string_view::npos ? c2 : line.find(':', c2 + 1);
    if (c3 != std::string_view::npos && line.substr(c2 + 1, c3 - c2 - 1) == want)
      return std::string(line.substr(0, c1));
  }
  return {};
}

std::int64_t i_sarg(const Node* n, Frame& f) {
  if (!f.hit) return 0;
  std::uint64_t v = 0;
  if (!read_user(f.hit->regs->rsp + 8 * static_cast<std::uint64_t>(n->imm + 1), &v, 8))
      [[unlikely]] {
    f.rt->read_faults.fetch_add(1, std::memory_order_relaxed);
    return 0;
  }
  return static_cast<std::int64_t>(v);
}

namespace {

// pcomm's and leader_comm's caches: a process's pid and its name, from
// /proc/PID/task/PID/comm (the thread group leader's). Refreshed under the lock when the
// pid asked for is another (a forked child, a process reparented); the name is written
// before the pid is published.
struct ProcessName {
  std::mutex mu;
  std::atomic<pid_t> pid{0};
  char name[ast::kCommSize] = {};
};

std::uint32_t process_name(ProcessName& p, pid_t pid, char* out) {
  if (p.pid.load(std::memory_order_acquire) != pid) [[unlikely]] {
    std::lock_guard lock(p.mu);
    char name[ast::kCommSize] = {};
    const std::string path =
        "/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/comm";
    if (const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC); fd >= 0) {
      const ssize_t len = ::read(fd, name, sizeof name - 1);
      ::close(fd);
      for (ssize_t i = 0; i < len; i++)
        if (name[i] == '\n') name[i] = 0;
    }
    std::memcpy(p.name, name, sizeof name);
    p.pid.store(pid, std::memory_order_release);
  }
  char name[ast::kCommSize];
  std::memcpy(name, p.name, sizeof name);
  name[ast::kCommSize - 1] = 0;
  return copy_out(out, name);
}

ProcessName& parent_name() {
  static ProcessName* p = new ProcessName;  // never destroyed: hits may run during exit
  return *p;
}
ProcessName& leader_name() {
  static ProcessName* p = new ProcessName;
  return *p;
}

}  // namespace

std::uint32_t s_pcomm(const Node*, Frame&, char* out) {
  return process_name(parent_name(), ::getppid(), out);
}

std::uint32_t s_leader_comm(const Node*, Frame&, char* out) {
  return process_name(leader_name(), ::getpid(), out);
}

void misc_init_once(bool username) {
  static std::once_flag once, once_username;
  std::call_once(once, [] { g_ncpus = std::max(1, get_nprocs_conf()); });
  // Only for a script that names it: the traced program sees no file opened otherwise.
  if (!username) return;
  std::call_once(once_username, [] {
    const uid_t uid = getuid();
    const std::string name = passwd_name(uid);
    // A uid with no name there: its number.
    g_username_len = copy_out(g_username, name.empty() ? std::to_string(uid) : name);
  });
}

std::int64_t i_ncpus(const Node*, Frame&) {
  return g_ncpus;
}

std::int64_t i_rand(const Node*, Frame&) {
  std::uint64_t x = t_rand;
  if (x == 0) [[unlikely]]
    x = (__rdtsc() ^ (static_cast<std::uint64_t>(thread::ids().tid) << 32)) | 1;
  // xorshift64*: a full period over the non-zero states.
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  t_rand = x;
  return static_cast<std::uint32_t>((x * 0x2545F4914F6CDD1DULL) >> 32);
}

std::uint32_t s_username(const Node*, Frame&, char* out) {
  std::memcpy(out, g_username, g_username_len + 1);
  return g_username_len;
}

std::int64_t i_strncmp(const Node* n, Frame& f) {
  char a[kStrBytes], b[kStrBytes];
  const std::uint32_t la = n->a->s(n->a, f, a);
  const std::uint32_t lb = n->b->s(n->b, f, b);
  // Equal in the first imm bytes, a NUL ending both: 0; else 1 (bpftrace's values).
  for (std::int64_t k = 0; k < n->imm; ++k) {
    const char ca = static_cast<std::uint32_t>(k) < la ? a[k] : '\0';
    const char cb = static_cast<std::uint32_t>(k) < lb ? b[k] : '\0';
    if (ca != cb) return 1;
    if (ca == '\0') return 0;
  }
  return 0;
}

std::int64_t i_strcontains(const Node* n, Frame& f) {
  char h[kStrBytes], nd[kStrBytes];
  const std::uint32_t lh = n->a->s(n->a, f, h);
  const std::uint32_t ln = n->b->s(n->b, f, nd);
  return std::string_view(h, lh).find(std::string_view(nd, ln)) != std::string_view::npos;
}

std::int64_t i_signal(const Node* n, Frame& f) {
  const std::int64_t sig = n->a->i(n->a, f);
  if (sig < 1 || sig > 64) return 0;  // a computed number out of range: nothing sent
  // To the traced process, as bpf_send_signal sends to the current thread group: one
  // system call, no allocation, async-signal-safe.
  ::kill(thread::ids().pid, static_cast<int>(sig));
  return 0;
}

namespace {

std::int64_t send_request(const Node* n, Frame& f, Sink::Request kind) {
  thread_local std::string& text = *new std::string;  // never destroyed: hits run in exit()
  if (text.capacity() < 4096) text.reserve(4096);
  text.clear();
  format_call(n, f, text, /*escape=*/false);  // the command as written, as bpftrace runs it
  if (f.rt->sink) f.rt->sink->request(kind, text);
  return 0;
}

}  // namespace

std::int64_t i_system(const Node* n, Frame& f) {
  return send_request(n, f, Sink::Request::system);
}

std::int64_t i_cat(const Node* n, Frame& f) {
  return send_request(n, f, Sink::Request::cat);
}

std::uint32_t s_ntop(const Node* n, Frame& f, char* out) {
  const std::int64_t family = n->a ? n->a->i(n->a, f) : AF_INET;
  const std::int64_t addr = n->b->i(n->b, f);
  unsigned char bytes[16] = {};
  std::memcpy(bytes, &addr, sizeof addr);  // the integer's bytes, as it lies in memory
  if ((family != AF_INET && family != AF_INET6) ||
      !inet_ntop(static_cast<int>(family), bytes, out, kStrBytes)) {
    out[0] = '\0';
    return 0;
  }
  return static_cast<std::uint32_t>(std::strlen(out));
}

std::uint32_t s_macaddr(const Node* n, Frame& f, char* out) {
  unsigned char mac[6] = {};
  const auto addr = static_cast<std::uint64_t>(n->a->i(n->a, f));
  if (!read_user(addr, mac, sizeof mac)) f.rt->read_faults.fetch_add(1, std::memory_order_relaxed);
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (int k = 0; k < 6; ++k) {
    out[k * 3] = kHex[mac[k] >> 4];
    out[k * 3 + 1] = kHex[mac[k] & 15];
    out[k * 3 + 2] = k < 5 ? ':' : '\0';
  }
  return 17;
}

namespace {

// After a body that stopped: true to go on looping (continue), false to leave the loop;
// `stop` says whether the action stops too (return, exit(), the budget).
inline bool resume(const SNode* s, Frame& f, bool& stop) {
  std::int64_t& flag = f.islots[(s->count >> 8) & 0xff];
  const std::int64_t c = flag;
  flag = 0;
  stop = c == 0;
  return c == 2;
}

inline bool over_budget(const SNode* s, Frame& f) {
  return ++f.islots[s->count & 0xff] > kMaxLoopIterations;
}

}  // namespace

bool st_while(const SNode* s, Frame& f) {
  while (s->cond->i(s->cond, f)) {
    if (over_budget(s, f)) return false;
    if (!run_block(s->body, f)) {
      bool stop = false;
      if (!resume(s, f, stop)) return !stop;
    }
  }
  return true;
}

bool st_for(const SNode* s, Frame& f) {
  // The range is read once, before the first iteration (bpftrace's rule).
  std::int64_t next = s->value->i(s->value, f);
  const std::int64_t end = s->cond->i(s->cond, f);
  std::int64_t& var = f.islots[(s->count >> 16) & 0xff];
  for (; next < end; ++next) {
    if (over_budget(s, f)) return false;
    var = next;
    if (!run_block(s->body, f)) {
      bool stop = false;
      if (!resume(s, f, stop)) return !stop;
    }
  }
  return true;
}

// The key parts of row `r` into the tuple `keys` lays out (each at its field's offset, an
// integer as its field's bytes, a string or copy its field's size), zeros elsewhere.
static void key_tuple(const MapDesc& d, const ValueLayout& keys, const Row& r, char* out) {
  std::memset(out, 0, kStrBytes);
  std::uint32_t w = 0;
  for (std::size_t k = 0; k < keys.fields.size(); ++k) {
    const ValueLayout::Field& fl = keys.fields[k];
    const std::uint32_t words = d.part_words(k);
    const std::uint32_t room = fl.offset < kStrBytes ? kStrBytes - fl.offset : 0;
    const std::uint32_t size = std::min({fl.layout ? fl.layout->size : 8u, words * 8u, room});
    if (w + words > r.key.size()) return;
    std::memcpy(out + fl.offset, &r.key[w], size);
    w += words;
  }
}

bool st_for_map(const SNode* s, Frame& f) {
  const std::uint32_t map = s->value->map;
  const MapDesc& d = f.rt->maps->desc(map);
  const std::vector<Row> rows = f.rt->maps->snapshot(map);
  const std::int64_t slot = (s->count >> 16) & 0xff;
  const ValueLayout* keys = nullptr;  // several key parts: the tuple they fill
  if (s->op >= 0) {
    const auto it = f.rt->layouts.find(static_cast<int>(s->op));
    if (it == f.rt->layouts.end() || it->second->fields.size() != d.key_is_string.size())
      return true;
    keys = it->second.get();
  }
  for (const Row& r : rows) {
    if (over_budget(s, f)) return false;
    if (keys) {
      key_tuple(d, *keys, r, f.sslots[slot + 1]);
    } else if (d.part(0) == KeyPart::integer) {
      f.islots[slot + 1] = s64(r.key[0]);
    } else {
      std::memcpy(f.sslots[slot + 1], r.key.data(), kStrBytes);
    }
    switch (d.kind) {
      case ValueKind::string:
      case ValueKind::record:
        std::memcpy(f.sslots[slot + 2], r.value.data(), kStrBytes);
        break;
      case ValueKind::avg:
        f.islots[slot + 2] = r.value[0] ? s64(r.value[1]) / s64(r.value[0]) : 0;
        break;
      default:
        f.islots[slot + 2] = s64(r.value[0]);
        break;
    }
    if (!run_block(s->body, f)) {
      bool stop = false;
      if (!resume(s, f, stop)) return !stop;
    }
  }
  return true;
}

std::int64_t i_len(const Node* n, Frame& f) {
  return static_cast<std::int64_t>(f.rt->maps->snapshot(n->map).size());
}

bool st_break(const SNode* s, Frame& f) {
  f.islots[s->count] = 1;
  return false;
}

bool st_continue(const SNode* s, Frame& f) {
  f.islots[s->count] = 2;
  return false;
}

}  // namespace hotprobe::script::nodes

namespace hotprobe::script {

namespace {

void walk(ast::Action& a, ast::Expr& e, const std::function<void(ast::Action&, ast::Expr&)>& fn) {
  fn(a, e);
  for (ast::ExprPtr& x : e.args)
    if (x) walk(a, *x, fn);
}
void walk(ast::Action& a, std::vector<ast::Stmt>& body,
          const std::function<void(ast::Action&, ast::Expr&)>& fn) {
  for (ast::Stmt& s : body) {
    for (ast::ExprPtr* e : {&s.expr, &s.target, &s.value, &s.cond})
      if (*e) walk(a, **e, fn);
    walk(a, s.body, fn);
    walk(a, s.else_body, fn);
  }
}

}  // namespace

void for_each_expr(ast::Program& program, const std::function<void(ast::Action&, ast::Expr&)>& fn) {
  for (ast::Action& a : program.actions) {
    if (a.predicate) walk(a, *a.predicate, fn);
    walk(a, a.body, fn);
  }
}

std::string uaddr_line(std::string_view module, std::string_view name, std::uint64_t value,
                       std::uint64_t size, std::string_view path, bool found) {
  char nums[48];
  std::snprintf(nums, sizeof nums, "%llx\t%llx", static_cast<unsigned long long>(value),
                static_cast<unsigned long long>(size));
  return std::string(kUaddrPrefix) + std::string(module) + "\t" + std::string(name) + "\t" +
         (found ? std::string(nums) : std::string("-\t0")) + "\t" + std::string(path) + "\n";
}

}  // namespace hotprobe::script

namespace hotprobe::script::lowering {

Result<const Node*> lower_stack_value(Lowerer& low, const ast::Expr& e, Node* n) {
  stack_table_init();
  if (e.func == ast::Func::ustack) {
    n->s = nodes::s_ustack_value;
    n->imm = e.value;
    return n;
  }
  auto a = low.expr(*e.args[0]);
  if (!a) return a.error();
  n->a = *a;
  n->s = nodes::s_usym_value;
  return n;
}

bool lower_extra_builtin(const ast::Expr& e, Node* n) {
  if (e.name == "ustack") {  // a value (the checker took it): its marker, run_stack.h
    stack_table_init();
    n->s = nodes::s_ustack_value;
    n->imm = e.value;
    return true;
  }
  if (e.name == "usermode") {  // a probe of user code always runs in user mode
    n->i = nodes::i_const;
    n->imm = 1;
    return true;
  }
  const int which = extra_builtin(e.name);
  if (which < 0) return false;
  if (which == kPcomm || which == kLeaderComm) {
    n->s = which == kPcomm ? nodes::s_pcomm : nodes::s_leader_comm;
  } else {
    n->i = nodes::i_sarg;
    n->imm = which;
  }
  return true;
}

}  // namespace hotprobe::script::lowering
