// Whether a stopped thread may call into the loader now: the loader's locks, rseq, the
// unwinder, libc's allocator and the callers on its stack (docs/design/inject.md, "Which
// thread, and when"). The injector (inject.cc) stops threads until one is at a safe point.
#include "inject/safe_point.h"

#include <link.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>

#include <cstring>
#include <string>

#ifndef PTRACE_GET_RSEQ_CONFIGURATION
#define PTRACE_GET_RSEQ_CONFIGURATION 0x420f
#endif

namespace hp::inject {

namespace {

// Where the dynamic loader's two recursive locks (_dl_load_lock, _dl_load_write_lock,
// adjacent in _rtld_global) lie, found in this process: dl_iterate_phdr holds the write
// lock while it runs its callback, so the callback finds it as the recursive mutex in
// _rtld_global owned by this thread. A target that maps the same ld.so file has them at
// the same link-time address.
struct LoaderLockLayout {
  bool valid = false;
  elf::ModuleKey ldso;
  std::uintptr_t load_lock_vaddr = 0;  // link-time address in ld.so
};

struct PthreadMutexWords {  // the start of glibc's x86-64 pthread_mutex_t
  int lock;
  unsigned count;
  int owner;
  unsigned nusers;
  int kind;
};
constexpr std::size_t kMutexSize = 40;  // sizeof(pthread_mutex_t) on x86-64
constexpr int kMutexRecursive = 1;      // PTHREAD_MUTEX_RECURSIVE_NP

struct LockScan {
  const std::uint8_t* base;
  std::size_t size;
  long found = -1;
};

int find_owned_lock(dl_phdr_info*, std::size_t, void* arg) {
  auto* scan = static_cast<LockScan*>(arg);
  const int self = static_cast<int>(::syscall(SYS_gettid));
  for (std::size_t off = 0; off + kMutexSize <= scan->size; off += 8) {
    PthreadMutexWords m;
    std::memcpy(&m, scan->base + off, sizeof m);
    if (m.owner == self && (m.kind & 0x7f) == kMutexRecursive && m.count > 0) {
      scan->found = static_cast<long>(off);
      break;
    }
  }
  return 1;  // one call is enough
}

const LoaderLockLayout& loader_lock_layout() {
  static const LoaderLockLayout layout = [] {
    LoaderLockLayout l;
    void* rg = ::dlsym(RTLD_DEFAULT, "_rtld_global");
    Dl_info info{};
    ElfW(Sym)* sym = nullptr;
    if (!rg || ::dladdr1(rg, &info, reinterpret_cast<void**>(&sym), RTLD_DL_SYMENT) == 0 || !sym ||
        !info.dli_fname) {
      return l;
    }
    LockScan scan{static_cast<const std::uint8_t*>(rg), sym->st_size};
    ::dl_iterate_phdr(find_owned_lock, &scan);
    if (scan.found < static_cast<long>(kMutexSize)) return l;
    PthreadMutexWords load;
    std::memcpy(&load, scan.base + scan.found - kMutexSize, sizeof load);
    if ((load.kind & 0x7f) != kMutexRecursive) return l;
    struct stat st;
    if (::stat(info.dli_fname, &st) != 0) return l;
    l.ldso = elf::ModuleKey{st.st_dev, st.st_ino};
    // ld.so is linked at 0: its load bias is its base.
    l.load_lock_vaddr = reinterpret_cast<std::uintptr_t>(rg) + scan.found - kMutexSize -
                        reinterpret_cast<std::uintptr_t>(info.dli_fbase);
    l.valid = true;
    return l;
  }();
  return layout;
}

// The address of _dl_load_lock in the target, 0 when unknown (another ld.so build).
}  // namespace

std::uintptr_t target_load_lock(const elf::ModuleList& mods) {
  const LoaderLockLayout& l = loader_lock_layout();
  if (!l.valid) return 0;
  const elf::Module* m = mods.find(l.ldso);
  if (!m) return 0;
  auto bias = mods.compute_load_bias(*m);
  return bias.ok() ? *bias + l.load_lock_vaddr : 0;
}

bool is_loader(std::string_view module_name) {
  return module_name.starts_with("ld-linux") || module_name.starts_with("ld-2.") ||
         module_name == "ld.so";
}
bool is_libc(std::string_view module_name) {
  return module_name.starts_with("libc.so") || module_name.starts_with("libc-");
}

namespace {

// Whether the bytes just before `ret` (read from the target) end with a call instruction:
// `call rel32` (e8), or `call r/m64` (ff /2) in any of its lengths. A word on the stack
// that passes is taken for a return address.
bool follows_call(Tracee& t, std::uintptr_t ret) {
  std::uint8_t b[7];
  if (ret < sizeof b || !t.read_memory(ret - sizeof b, b, sizeof b).ok()) return false;
  if (b[2] == 0xe8) return true;
  for (std::size_t k = 2; k <= 7; ++k) {
    const std::uint8_t op = b[7 - k], modrm = k >= 2 && 7 - k + 1 < 7 ? b[7 - k + 1] : 0;
    if (op != 0xff || ((modrm >> 3) & 7) != 2) continue;
    const int mod = modrm >> 6, rm = modrm & 7;
    std::size_t len = 2;
    if (mod == 0 && rm == 5) {
      len = 6;
    } else if (mod == 0 && rm == 4) {
      len = 3;  // SIB (base 5 with disp32 would be 7)
    } else if (mod == 1) {
      len = rm == 4 ? 4 : 3;
    } else if (mod == 2) {
      len = rm == 4 ? 7 : 6;
    }
    if (mod == 0 && rm == 4 && k == 7 && (b[2] & 7) == 5) len = 7;
    if (len == k) return true;
  }
  return false;
}

// The stopped thread's callers, from the return addresses on its stack (libc is built
// without frame pointers, so every word of the top kStackScanBytes is a candidate; one
// that points into libc just after a call instruction is taken for a frame).
// A frame in a libc function that holds the loader's or the
// allocator's or a stream's lock while it calls out (malloc hooks, dl_iterate_phdr
// callbacks, fopencookie functions, atfork handlers), makes the stop unsafe even though
// the thread itself is elsewhere: the 1-in-40 churn deadlock was a thread stopped in
// pthread_mutex_lock/unlock called from the loader, where the lock word and its owner
// field disagree for a few instructions. A stale word that passes makes us refuse a safe
// stop (we retry); it cannot make us accept an unsafe one.
constexpr std::size_t kStackScanBytes = 16 * 1024;

// Functions of libc that hold the allocator's, the loader's or a stream's lock while
// they call out (malloc hooks, dl_iterate_phdr callbacks, fopencookie functions, atfork
// handlers).
constexpr std::string_view kHolders[] = {"alloc", "free", "memalign", "dl",
                                         "fork",  "_IO_", "printf"};

std::string unsafe_caller_by_scan(Tracee& t, const elf::ModuleList& mods, std::uintptr_t rsp) {
  std::vector<std::uintptr_t> words(512 / sizeof(std::uintptr_t));
  for (std::size_t done = 0; done < kStackScanBytes; done += 512) {
    if (!t.read_memory(rsp + done, words.data(), 512).ok()) break;  // the stack's end
    for (std::size_t i = 0; i < words.size(); ++i) {
      const std::uintptr_t w = words[i];
      const elf::Module* m = mods.containing(w);
      if (!m) continue;
      const std::string_view name = m->name();
      const bool loader = is_loader(name);
      if (!loader && !is_libc(name)) continue;
      if (!follows_call(t, w)) continue;
      const std::size_t at = done + i * sizeof w;
      // Not the loader's own return addresses: the main thread's live frames keep stale
      // ones in slots not yet written (ld.so ran the constructors on that stack before
      // main), which made single-threaded programs unattachable. A thread really inside
      // the loader owns its lock (checked exactly, with the pthread_mutex_* window in
      // between refused by rip), or is in lazy binding, which takes no lock.
      if (loader) continue;
      auto file = mods.elf(*m);
      auto off = m->address_to_offset(w - 1);
      const elf::Symbol* sym = file.ok() && off.ok() ? (*file)->containing_offset(*off)
                                                     : static_cast<elf::Symbol*>(nullptr);
      if (!sym) continue;  // start_thread, __libc_start_call_main: every stack has them
      for (std::string_view holder : kHolders) {
        if (sym->name.find(holder) != std::string_view::npos) {
          return "called from libc's " + std::string(sym->name) + " (return address at rsp+" +
                 std::to_string(at) + ")";
        }
      }
    }
  }
  return "";
}

// The stopped thread's callers from its real frames (unwound with each module's CFI): a
// frame in the loader, in the unwinder, or in a libc function that holds a lock while it
// calls out makes the stop unsafe, however deep. When the unwinder cannot reach the
// outermost frame (a module without CFI, a corrupt stack), the stack words are scanned
// instead (unsafe_caller_by_scan), which may refuse a safe stop but never accepts an
// unsafe one.
std::string unsafe_caller(Tracee& t, const elf::ModuleList& mods, Unwinder* unwinder,
                          std::uintptr_t rsp) {
  if (!unwinder) return unsafe_caller_by_scan(t, mods, rsp);
  const Frames f = unwinder->frames(t.tid());
  if (!f.complete) return unsafe_caller_by_scan(t, mods, rsp);
  const bool in_syscall = static_cast<long>(t.saved().orig_rax) >= 0;
  for (std::size_t i = 1; i < f.pcs.size(); ++i) {
    const elf::Module* m = mods.containing(f.pcs[i]);
    if (!m) continue;
    const std::string_view name = m->name();
    const std::string frame = " (frame " + std::to_string(i) + ")";
    if (is_loader(name)) return "called from the dynamic loader" + frame;
    if (name.starts_with("libgcc_s")) return "called from the unwinder" + frame;
    if (!is_libc(name)) continue;
    auto file = mods.elf(*m);
    auto off = m->address_to_offset(f.pcs[i]);
    const elf::Symbol* sym = file.ok() && off.ok() ? (*file)->containing_offset(*off)
                                                   : static_cast<elf::Symbol*>(nullptr);
    if (!sym) continue;  // start_thread, __libc_start_call_main
    for (std::string_view holder : kHolders) {
      if (sym->name.find(holder) == std::string_view::npos) continue;
      // Blocked in a system call below stdio (a read refilling stdin's buffer, a write
      // flushing stdout's), the thread holds that one stream's lock and no other: the
      // loader and the agent never take it. The list lock taken by fflush(NULL) and
      // exit's stream cleanup is another matter.
      if (in_syscall && (holder == "_IO_" || holder == "printf") &&
          sym->name.find("_IO_flush_all") == std::string_view::npos &&
          sym->name.find("_IO_cleanup") == std::string_view::npos &&
          sym->name.find("_IO_list") == std::string_view::npos) {
        continue;
      }
      return "called from libc's " + std::string(sym->name) + frame;
    }
  }
  return "";
}

// The room the call needs below the thread's rsp: the register block and xsave image of
// the stub, then dlopen and the agent's start, with a wide margin.
constexpr std::uintptr_t kCallStack = 64 * 1024;

// A Go program's thread that runs on a goroutine's stack (or a signal stack) with less
// room below rsp than the call needs: goroutine stacks are small (2 KiB to start) and lie
// next to each other in the heap, so the call would write over another goroutine's frames
// ("unexpected return pc" when it returns). The running goroutine's g is at fs:-8 in a Go
// executable (runtime.tlsg) and begins with its stack's bounds [lo, hi); a thread on its
// system stack (g0: idle, in the scheduler, in C code) has room.
std::string on_small_go_stack(Tracee& t, const elf::ModuleList& mods) {
  const elf::Module* main = mods.main();
  if (!main) return "";
  auto file = mods.elf(*main);
  if (!file.ok() || !(*file)->is_go()) return "";
  const user_regs_struct& r = t.saved();
  std::uint64_t g = 0;
  std::uint64_t bounds[2] = {};  // g.stack.lo, g.stack.hi
  if (r.fs_base < 8 || !t.read_memory(r.fs_base - 8, &g, sizeof g).ok() || g == 0 ||
      !t.read_memory(g, bounds, sizeof bounds).ok())
    return "";
  if (r.rsp < bounds[0] || r.rsp >= bounds[1] || r.rsp - bounds[0] >= kCallStack) return "";
  return "running on a Go goroutine's stack with " + std::to_string(r.rsp - bounds[0]) +
         " bytes below rsp (the call needs " + std::to_string(kCallStack) +
         "; goroutine stacks lie next to each other)";
}

}  // namespace

// Why calling into the loader from this stop could deadlock or corrupt state, or "" when
// it is safe (the argument is in docs/design/inject.md).
std::string unsafe_reason(Tracee& t, const elf::ModuleList& mods, std::uintptr_t load_lock,
                          Unwinder* unwinder) {
  const user_regs_struct& r = t.saved();
  const std::uintptr_t rip = r.rip;
  // Anywhere below a loader entry point (dlopen, dlclose, dl_iterate_phdr callbacks,
  // lazy binding): the thread owns one of the loader's locks.
  if (load_lock != 0) {
    PthreadMutexWords locks[2];  // _dl_load_lock, _dl_load_write_lock
    std::uint8_t raw[2 * kMutexSize];
    if (t.read_memory(load_lock, raw, sizeof raw).ok()) {
      std::memcpy(&locks[0], raw, sizeof locks[0]);
      std::memcpy(&locks[1], raw + kMutexSize, sizeof locks[1]);
      for (const PthreadMutexWords& m : locks) {
        if ((m.kind & 0x7f) == kMutexRecursive && m.owner == t.tid()) {
          return "holding the dynamic loader's lock (inside dlopen, dlclose or "
                 "dl_iterate_phdr)";
        }
      }
    }
  }
  // Inside an rseq critical section the kernel would abort it on the next return to
  // user mode; after our call it would not any more (the call clears rseq_cs).
  struct {
    std::uint64_t abi_pointer;
    std::uint32_t abi_size, signature, flags, pad;
  } rseq_conf{};
  if (::ptrace(static_cast<__ptrace_request>(PTRACE_GET_RSEQ_CONFIGURATION), t.tid(),
               sizeof rseq_conf, &rseq_conf) > 0 &&
      rseq_conf.abi_pointer != 0) {
    std::uint64_t cs = 0;
    if (t.read_memory(rseq_conf.abi_pointer + 8, &cs, sizeof cs).ok() && cs != 0) {
      std::uint64_t desc[3] = {};  // start_ip, post_commit_offset, abort_ip
      if (t.read_memory(cs + 8, desc, sizeof desc).ok() && rip - desc[0] < desc[1]) {
        return "inside an rseq critical section";
      }
    }
  }
  if (std::string go = on_small_go_stack(t, mods); !go.empty()) return go;
  const elf::Module* m = mods.containing(rip);
  if (m && is_loader(m->name())) return "in the dynamic loader (it may hold the loader's lock)";
  if (m && m->name().starts_with("libgcc_s"))
    return "in the unwinder (it may hold the loader's lock)";
  if (std::string caller = unsafe_caller(t, mods, unwinder, r.rsp); !caller.empty()) {
    return caller;
  }
  if (!m || !is_libc(m->name())) return "";
  const long nr = static_cast<long>(r.orig_rax);
  if (nr >= 0) {
    // Blocked in (or just back from) a system call. The memory calls are the ones malloc
    // makes with an arena lock held.
    switch (nr) {
      case SYS_mmap:
      case SYS_munmap:
      case SYS_mprotect:
      case SYS_brk:
      case SYS_mremap:
      case SYS_madvise:
        return "in a memory system call that malloc may make with its lock held";
      default:
        break;
    }
  }
  auto file = mods.elf(*m);
  auto off = m->address_to_offset(rip);
  const elf::Symbol* sym =
      file.ok() && off.ok() ? (*file)->containing_offset(*off) : static_cast<elf::Symbol*>(nullptr);
  if (nr >= 0) {
    // Waiting for one of libc's own locks (malloc's arenas, the loader's helpers): the
    // allocator can hold an arena lock while it waits for another, and a thread that owns
    // the loader's lock may be waiting for that arena.
    if (nr == SYS_futex && sym &&
        sym->name.find("lll_lock_wait_private") != std::string_view::npos) {
      return "waiting for a libc-internal lock (it may hold another)";
    }
    return "";
  }
  if (!sym) return "in libc code without a public symbol (possibly the allocator)";
  // The allocator and loader and their wrappers (the memory calls' wrappers too: a thread
  // just back from madvise in free() still holds the arena lock), fork, exit, stdio.
  // pthread_mutex_*: between taking the lock word and recording the owner (and between
  // clearing the owner and releasing the word) the loader-lock check above cannot see
  // that the thread holds the loader's lock.
  static constexpr std::string_view kRisky[] = {
      "alloc",  "free", "memalign", "dl",       "fork", "clone",  "exit",    "_IO_",
      "printf", "mmap", "munmap",   "mprotect", "brk",  "mremap", "madvise", "pthread_mutex"};
  for (std::string_view risky : kRisky) {
    if (sym->name.find(risky) != std::string_view::npos) {
      return "in libc's " + std::string(sym->name);
    }
  }
  return "";
}

}  // namespace hp::inject
