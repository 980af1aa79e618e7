// Starting a preloaded library in a program this process starts, before the constructors
// of the program's other libraries run (`hotprobe run`): see inject.h and
// docs/design/inject.md, "At a program's start".
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "elf/maps.h"
#include "elf/modules.h"
#include "inject/inject.h"
#include "inject/process_checks.h"
#include "inject/return_stub.h"
#include "inject/safe_point.h"
#include "inject/tracee.h"

namespace hp::inject {

namespace {

constexpr std::uint8_t kInt3 = 0xcc;
constexpr int kRtConsistent = 0;  // r_debug.r_state: the loader's list is complete
constexpr std::size_t kMaxDynamic = 4096;
constexpr int kMaxObjects = 4096;
constexpr std::chrono::seconds kReachStart{30};

struct Auxv {
  std::uintptr_t base = 0;  // AT_BASE: the loader's load address (0: no loader)
  std::uintptr_t phdr = 0;  // AT_PHDR: the program headers of the executable
  std::uintptr_t phnum = 0;
  std::uintptr_t entry = 0;  // AT_ENTRY: the executable's entry point
};

Result<Auxv> read_auxv(pid_t pid) {
  auto text = elf::read_proc_file(proc(pid, "auxv"));
  if (!text.ok()) return text.error();
  Auxv a;
  for (std::size_t i = 0; i + 16 <= text->size(); i += 16) {
    std::uint64_t kv[2];
    std::memcpy(kv, text->data() + i, sizeof kv);
    switch (kv[0]) {
      case AT_BASE:
        a.base = kv[1];
        break;
      case AT_PHDR:
        a.phdr = kv[1];
        break;
      case AT_PHNUM:
        a.phnum = kv[1];
        break;
      case AT_ENTRY:
        a.entry = kv[1];
        break;
      default:
        break;
    }
  }
  return a;
}

// The child's next stop, or its end (status in `*ended`, an error returned). Waits until
// the deadline, polling as the Tracee does. `pid` is the thread waited for; a thread other
// than the leader that execs takes the leader's id (`leader`) in the exec, and `pid` becomes
// that. A thread other than the leader that ends is not the process's end (no `*ended`).
Result<int> wait_child(pid_t& pid, Clock::time_point deadline, int* ended, pid_t leader = 0) {
  long ns = 20'000;
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, __WALL | WNOHANG);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno == ECHILD && leader > 0 && pid != leader) {
      pid = leader;  // its exec made it the leader
      continue;
    }
    if (r < 0)
      return Error(Errc::io_error, "waitpid(" + std::to_string(pid) + "): " + std::strerror(errno));
    if (r == pid && (WIFEXITED(status) || WIFSIGNALED(status))) {
      if (ended && (leader == 0 || pid == leader)) *ended = status;
      return Error(Errc::not_found, "process " + std::to_string(pid) + " ended before its start");
    }
    if (r == pid && WIFSTOPPED(status)) return status;
    if (Clock::now() >= deadline) {
      // Stopped for the way out: the breakpoints come out and the detach needs a stop.
      if (::ptrace(PTRACE_INTERRUPT, pid, 0, 0) == 0) {
        for (int i = 0; i < 1000 && ::waitpid(pid, &status, __WALL | WNOHANG) == 0; ++i) {
          timespec ms{0, 1'000'000};
          ::nanosleep(&ms, nullptr);
        }
      }
      return Error(Errc::timed_out,
                   "process " + std::to_string(pid) + " did not reach its start in time");
    }
    timespec ts{0, ns};
    ::nanosleep(&ts, nullptr);
    if (ns < 1'000'000) ns *= 2;
  }
}

// Breakpoints (int3) in the child's code, each with the byte it replaced. Removed by
// remove_all() or when this goes out of scope, so that no path leaves one behind.
class Breakpoints {
 public:
  explicit Breakpoints(Tracee& t) : t_(t) {}
  Breakpoints(const Breakpoints&) = delete;
  Breakpoints& operator=(const Breakpoints&) = delete;
  ~Breakpoints() { (void)remove_all(); }

  Result<void> insert(std::uintptr_t addr) {
    if (has(addr)) return {};
    std::uint8_t old = 0;
    HP_TRY(t_.read_memory(addr, &old, 1));
    HP_TRY(t_.write_memory(addr, &kInt3, 1));
    set_.emplace_back(addr, old);
    return {};
  }
  Result<void> remove(std::uintptr_t addr) {
    for (auto it = set_.begin(); it != set_.end(); ++it) {
      if (it->first != addr) continue;
      const std::uint8_t old = it->second;
      set_.erase(it);
      return t_.write_memory(addr, &old, 1);
    }
    return {};
  }
  bool has(std::uintptr_t addr) const {
    return std::any_of(set_.begin(), set_.end(), [&](const auto& b) { return b.first == addr; });
  }
  std::size_t size() const { return set_.size(); }
  Result<void> remove_all() {
    Result<void> result;
    for (const auto& [addr, old] : set_) {
      if (auto r = t_.write_memory(addr, &old, 1); !r.ok() && result.ok()) result = r;
    }
    set_.clear();
    return result;
  }

 private:
  Tracee& t_;
  std::vector<std::pair<std::uintptr_t, std::uint8_t>> set_;
};

// Resumes the child with `sig` (0: none) and waits for its next stop; stops that are not
// a SIGTRAP (the program's own signals) are delivered on. Returns the SIGTRAP stop's
// status.
Result<int> run_to_trap(pid_t pid, int sig, __ptrace_request request, Clock::time_point deadline,
                        int* ended) {
  for (;;) {
    if (::ptrace(request, pid, 0, sig) != 0) {
      return Error(Errc::io_error, "ptrace(" + std::to_string(request) + ", " +
                                       std::to_string(pid) + "): " + std::strerror(errno));
    }
    auto st = wait_child(pid, deadline, ended);
    if (!st.ok()) return st.error();
    const int status = *st;
    const int event = status >> 16;
    sig = 0;
    if (event == PTRACE_EVENT_STOP) continue;  // a group-stop: let it go on
    if (event != 0) continue;                  // another event: nothing to pass on
    if (WSTOPSIG(status) == SIGTRAP) return status;
    sig = WSTOPSIG(status);  // the program's signal, delivered as it would have been
  }
}

Result<user_regs_struct> regs_of(pid_t pid) {
  user_regs_struct r{};
  if (::ptrace(PTRACE_GETREGS, pid, 0, &r) != 0)
    return Error(Errc::io_error, std::string("PTRACE_GETREGS: ") + std::strerror(errno));
  return r;
}

Result<void> set_rip(pid_t pid, std::uintptr_t rip) {
  auto r = regs_of(pid);
  if (!r.ok()) return r.error();
  r->rip = rip;
  if (::ptrace(PTRACE_SETREGS, pid, 0, &*r) != 0)
    return Error(Errc::io_error, std::string("PTRACE_SETREGS: ") + std::strerror(errno));
  return {};
}

// The executable's dynamic section in memory, from its program headers (AT_PHDR).
Result<std::uintptr_t> executable_dynamic(Tracee& t, const Auxv& aux) {
  if (aux.phdr == 0 || aux.phnum == 0 || aux.phnum > 256)
    return Error(Errc::unsupported, "the program's headers are not in its auxiliary vector");
  std::vector<Elf64_Phdr> ph(aux.phnum);
  HP_TRY(t.read_memory(aux.phdr, ph.data(), ph.size() * sizeof(Elf64_Phdr)));
  std::uintptr_t bias = 0;
  bool have_bias = false;
  for (const auto& p : ph) {
    if (p.p_type == PT_PHDR) {
      bias = aux.phdr - p.p_vaddr;
      have_bias = true;
    }
  }
  for (const auto& p : ph) {
    if (p.p_type != PT_DYNAMIC) continue;
    if (!have_bias) {
      // Without PT_PHDR: the headers lie in the first loaded segment, at e_phoff (64).
      for (const auto& q : ph) {
        if (q.p_type == PT_LOAD && q.p_offset == 0) {
          bias = aux.phdr - sizeof(Elf64_Ehdr) - q.p_vaddr;
          have_bias = true;
          break;
        }
      }
    }
    if (have_bias) return bias + p.p_vaddr;
  }
  return Error(Errc::unsupported, "the program has no dynamic section (statically linked)");
}

// The entries of a dynamic section in memory, up to DT_NULL.
Result<std::vector<Elf64_Dyn>> read_dynamic(Tracee& t, std::uintptr_t at) {
  std::vector<Elf64_Dyn> out;
  Elf64_Dyn chunk[32];
  while (out.size() < kMaxDynamic) {
    HP_TRY(t.read_memory(at + out.size() * sizeof(Elf64_Dyn), chunk, sizeof chunk));
    for (const auto& d : chunk) {
      if (d.d_tag == DT_NULL) return out;
      out.push_back(d);
    }
  }
  return Error(Errc::invalid_argument, "a dynamic section without its end");
}

// r_debug's address (the executable's DT_DEBUG, set by the loader), 0 when not yet set.
Result<std::uintptr_t> r_debug_of(Tracee& t, std::uintptr_t exe_dynamic) {
  auto dyn = read_dynamic(t, exe_dynamic);
  if (!dyn.ok()) return dyn.error();
  for (const auto& d : *dyn) {
    if (d.d_tag == DT_DEBUG) return static_cast<std::uintptr_t>(d.d_un.d_ptr);
  }
  return Error(Errc::unsupported, "the program has no DT_DEBUG entry for debuggers");
}

// The public head of glibc's struct link_map (<link.h>).
struct LinkMapHead {
  std::uintptr_t l_addr;
  std::uintptr_t l_name;
  std::uintptr_t l_ld;
  std::uintptr_t l_next;
  std::uintptr_t l_prev;
};

std::string base_name(const std::string& path) {
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// An object of the loader's list and the addresses of its initializers.
struct Object {
  std::string name;
  std::vector<std::uintptr_t> inits;
  bool libc = false;
};

// Every object of the loader's initial list with its initializers (DT_INIT, then each
// DT_INIT_ARRAY entry, already relocated), and whether libc is among them.
Result<std::vector<Object>> loaded_objects(Tracee& t, std::uintptr_t rdebug,
                                           std::uintptr_t loader_base) {
  std::uintptr_t map = 0;
  HP_TRY(t.read_memory(rdebug + offsetof(struct r_debug, r_map), &map, sizeof map));
  std::vector<Object> out;
  for (int n = 0; map != 0 && n < kMaxObjects; ++n) {
    LinkMapHead lm{};
    HP_TRY(t.read_memory(map, &lm, sizeof lm));
    map = lm.l_next;
    Object o;
    if (lm.l_name) {
      auto name = t.read_string(lm.l_name, 4096);
      if (name.ok()) o.name = *name;
    }
    o.libc = is_libc(base_name(o.name));
    if (lm.l_addr == loader_base || lm.l_ld == 0 || is_loader(base_name(o.name))) continue;
    auto dyn = read_dynamic(t, lm.l_ld);
    if (!dyn.ok()) continue;  // the vDSO or an object whose section is not readable
    std::uintptr_t init = 0, array = 0, array_size = 0;
    for (const auto& d : *dyn) {
      if (d.d_tag == DT_INIT) init = lm.l_addr + d.d_un.d_ptr;
      if (d.d_tag == DT_INIT_ARRAY) array = lm.l_addr + d.d_un.d_ptr;
      if (d.d_tag == DT_INIT_ARRAYSZ) array_size = d.d_un.d_val;
    }
    if (init) o.inits.push_back(init);
    if (array && array_size && array_size <= 4096 * sizeof(std::uintptr_t)) {
      std::vector<std::uintptr_t> fns(array_size / sizeof(std::uintptr_t));
      if (t.read_memory(array, fns.data(), fns.size() * sizeof(std::uintptr_t)).ok()) {
        for (std::uintptr_t f : fns)
          if (f != 0 && f != ~std::uintptr_t{0}) o.inits.push_back(f);
      }
    }
    out.push_back(std::move(o));
  }
  return out;
}

}  // namespace

Result<void> seize_child(pid_t pid) {
  if (::ptrace(PTRACE_SEIZE, pid, 0, PTRACE_O_TRACEEXEC) != 0) {
    const int err = errno;
    return Error(err == EPERM ? Errc::permission_denied : Errc::io_error,
                 "cannot trace process " + std::to_string(pid) +
                     " (PTRACE_SEIZE: " + std::string(std::strerror(err)) +
                     "): kernel.yama.ptrace_scope 3, a seccomp policy or a container may forbid "
                     "ptrace");
  }
  return {};
}

Result<Report> start_preloaded_library(pid_t pid, const std::string& library, std::string_view init,
                                       const Options& opts, int* ended) {
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline = start + opts.timeout;
  struct stat lib_st {};
  if (::stat(library.c_str(), &lib_st) != 0)
    return Error(Errc::not_found, library + ": " + std::strerror(errno));
  // The thread seized: the one about to exec (the leader unless opts.tid says otherwise).
  pid_t thread = opts.tid > 0 ? opts.tid : pid;
  Tracee t(pid, thread, deadline);
  t.adopt_seized();  // detached by t on every path
  // 1. The exec: the new image has only the loader and the executable mapped.
  const Clock::time_point exec_deadline =
      opts.exec_timeout.count() > 0 ? std::min(deadline, start + opts.exec_timeout) : deadline;
  for (int sig = 0;;) {
    auto st = wait_child(thread, exec_deadline, ended, pid);
    if (thread == pid) t.exec_took_leader_id();
    if (!st.ok()) return st.error();
    if ((*st >> 8) == (SIGTRAP | (PTRACE_EVENT_EXEC << 8))) break;
    sig = (*st >> 16) == 0 ? WSTOPSIG(*st) : 0;
    if (::ptrace(PTRACE_CONT, thread, 0, sig) != 0)
      return Error(Errc::io_error, std::string("PTRACE_CONT: ") + std::strerror(errno));
  }
  // The loader's work up to the first constructor takes milliseconds: a child that does
  // not get there in kReachStart is let go (the library starts where the loader starts it).
  const Clock::time_point reach_deadline = std::min(deadline, Clock::now() + kReachStart);
  auto aux = read_auxv(pid);
  if (!aux.ok()) return aux.error();
  if (aux->base == 0) {
    return Error(Errc::unsupported,
                 "the program has no dynamic loader (statically linked, or run as the loader "
                 "itself)");
  }
  auto first = elf::ModuleList::of_process(pid);
  if (!first.ok()) return first.error();
  const elf::Module* loader = nullptr;
  for (const elf::Module& m : first->modules())
    if (is_loader(m.name())) loader = &m;
  if (!loader) return Error(Errc::unsupported, "the program's dynamic loader is not glibc's");
  auto loader_file = first->elf(*loader);
  if (!loader_file.ok()) return loader_file.error();
  auto debug_state = (*loader_file)->lookup_one("_dl_debug_state");
  if (!debug_state.ok()) return debug_state.error();
  auto debug_addr = loader->offset_to_address(debug_state->file_offset);
  if (!debug_addr.ok()) return debug_addr.error();
  auto exe_dynamic = executable_dynamic(t, *aux);
  if (!exe_dynamic.ok()) return exe_dynamic.error();

  // 2. The loader's notice that its list is complete: every initial object mapped and
  // relocated, libc's early initialization done, no constructor run yet.
  Breakpoints bp(t);
  HP_TRY(bp.insert(*debug_addr));
  std::vector<Object> objects;
  for (__ptrace_request request = PTRACE_CONT;;) {
    auto st = run_to_trap(pid, 0, request, reach_deadline, ended);
    if (!st.ok()) return st.error();
    request = PTRACE_CONT;
    auto regs = regs_of(pid);
    if (!regs.ok()) return regs.error();
    if (regs->rip - 1 != *debug_addr) {
      if (!bp.size()) HP_TRY(bp.insert(*debug_addr));  // the single step below ended
      continue;
    }
    HP_TRY(bp.remove_all());
    HP_TRY(set_rip(pid, *debug_addr));
    auto rdebug = r_debug_of(t, *exe_dynamic);
    if (!rdebug.ok()) return rdebug.error();
    int state = -1;
    if (*rdebug)
      HP_TRY(t.read_memory(*rdebug + offsetof(struct r_debug, r_state), &state, sizeof state));
    if (state == kRtConsistent) {
      auto objs = loaded_objects(t, *rdebug, aux->base);
      if (!objs.ok()) return objs.error();
      if (std::any_of(objs->begin(), objs->end(), [](const Object& o) { return o.libc; })) {
        objects = std::move(*objs);
        break;
      }
    }
    // Not yet: step over the call's first instruction and put the breakpoint back.
    request = PTRACE_SINGLESTEP;
  }

  // 3. The first constructor after libc's: a breakpoint on every initializer, and on the
  // entry point for a program where none runs after libc's. The loader runs an object's
  // initializers one after the other, so libc's are done once another object's is reached
  // after one of libc's. An object reached before libc's (one that does not depend on
  // libc) runs on: the agent needs libc initialized.
  bool libc_started = true;
  for (const Object& o : objects) {
    if (o.libc && !o.inits.empty()) libc_started = false;
    for (std::uintptr_t f : o.inits)
      HP_TRY(bp.insert(f));
  }
  HP_TRY(bp.insert(aux->entry));
  const auto owner = [&](std::uintptr_t addr) -> const Object* {
    for (const Object& o : objects)
      if (std::find(o.inits.begin(), o.inits.end(), addr) != o.inits.end()) return &o;
    return nullptr;
  };
  std::uintptr_t at = 0;
  for (int pass = 0;;) {
    auto st = run_to_trap(pid, pass, PTRACE_CONT, reach_deadline, ended);
    if (!st.ok()) return st.error();
    auto regs = regs_of(pid);
    if (!regs.ok()) return regs.error();
    pass = SIGTRAP;  // a SIGTRAP of the program's own is delivered
    if (!bp.has(regs->rip - 1)) continue;
    pass = 0;
    at = regs->rip - 1;
    const Object* o = at == aux->entry ? nullptr : owner(at);
    if (!o || (libc_started && !o->libc)) break;
    // libc's first initializer, or an object initialized before libc: it runs untouched.
    if (o->libc) libc_started = true;
    for (std::uintptr_t f : o->inits)
      HP_TRY(bp.remove(f));
    HP_TRY(set_rip(pid, at));
  }
  HP_TRY(bp.remove_all());
  HP_TRY(set_rip(pid, at));

  // 4. The library's initializers, on the program's main thread at that constructor's
  // first instruction; unless the loader was about to run them itself.
  Report report;
  report.tid = pid;
  report.attempts = 1;
  const Object* at_object = at == aux->entry ? nullptr : owner(at);
  report.start_object = at_object == nullptr      ? "the program's entry point"
                        : at_object->name.empty() ? "the program"
                                                  : at_object->name;
  auto mods = elf::ModuleList::of_process(pid);
  if (!mods.ok()) return mods.error();
  const elf::Module* lib = mods->find(elf::ModuleKey{lib_st.st_dev, lib_st.st_ino});
  if (!lib) return Error(Errc::not_found, library + " is not loaded in the program (LD_PRELOAD)");
  for (const Object& o : objects) {
    if (&o == at_object && !o.name.empty()) {
      struct stat st {};
      if (::stat(o.name.c_str(), &st) == 0 && st.st_dev == lib_st.st_dev &&
          st.st_ino == lib_st.st_ino) {
        report.start_object = "the library itself";
        HP_TRY(t.detach());
        report.pause_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
        return report;
      }
    }
  }
  HP_TRY(t.adopt_stop());
  auto file = mods->elf(*lib);
  if (!file.ok()) return file.error();
  auto sym = (*file)->lookup_one(init);
  if (!sym.ok()) return sym.error();
  auto fn = lib->offset_to_address(sym->file_offset);
  if (!fn.ok()) return fn.error();
  auto stub = place_stub(t, *mods);
  if (!stub.ok()) return stub.error();
  const std::uint64_t args[] = {0};
  auto r = t.call(*stub, *fn, args);
  if (!r.ok()) {
    // The process ended inside the call (the library's initializer ended it).
    if (t.end_status() != -1 && ended) *ended = t.end_status();
    return r.error();
  }
  report.handle = r->value;  // what the function returned
  HP_TRY(t.restore_and_detach());
  report.pause_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  return report;
}

}  // namespace hp::inject
