// The probe engine: resolves specs, plans and builds sites, publishes consumers, and
// patches and unpatches in batches. See include/hotprobe/probe.h for the contract and
// docs/design/core.md for the mechanisms.
//
// Lock order: Registry::mu_ is taken first; under it, text_patch's transaction mutex and
// CodeMemory's mutex (both leaves). No lock is held while waiting for a grace period.
#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <mutex>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "arch/x86_64/clobber.h"
#include "arch/x86_64/code_memory.h"
#include "arch/x86_64/decode.h"
#include "arch/x86_64/plan.h"
#include "arch/x86_64/trampoline.h"
#include "base/assert.h"
#include "base/thread_annotations.h"
#include "core/batch_helper.h"
#include "core/dispatch.h"
#include "core/flat_map.h"
#include "core/ret_probe.h"
#include "core/site.h"
#include "core/text_patch.h"
#include "core/thread_state.h"
#include "elf/modules.h"
#include "hotprobe/probe.h"
#include "sync/tasks_trace.h"

extern "C" char __start_hp_dispatch[], __stop_hp_dispatch[];  // linker-made bounds

namespace hp::core {

using hotprobe::BatchMode;
using hotprobe::Handle;
using hotprobe::ProbeSpec;
using hotprobe::Regs;
using hotprobe::Scheme;

namespace {

struct SiteKey {
  std::uint64_t dev, ino, off;
  bool operator==(const SiteKey&) const = default;
};
struct SiteKeyHash {
  std::size_t operator()(const SiteKey& k) const noexcept {
    return std::hash<std::uint64_t>()(k.dev * 0x9E3779B97F4A7C15ull ^
                                      k.ino * 0xC2B2AE3D27D4EB4Full ^ k.off);
  }
};

// int3-mode sites by address, for the SIGTRAP hook: an immutable sorted array replaced
// whole under Registry::mu_ and read inside a tasks-trace read section (the old array is
// freed after a tasks-trace grace period: I1 matches I2).
struct Int3Table {
  std::vector<std::pair<std::uintptr_t, Site*>> entries;
};
std::atomic<Int3Table*> g_int3_table{nullptr};

const bool g_debug_sites = std::getenv("HOTPROBE_DEBUG") != nullptr;

HP_DISPATCH_SECTION std::uintptr_t int3_hook(std::uintptr_t trap, void* ucv) {
  if (!g_int3_table.load(std::memory_order_relaxed)) return 0;  // no int3 site yet
  sync::ReadGuard guard(sync::tasks_trace());
  Int3Table* t = g_int3_table.load(std::memory_order_acquire);  // I2: matches I1
  if (!t) return 0;
  auto it = std::lower_bound(t->entries.begin(), t->entries.end(), trap,
                             [](const auto& e, std::uintptr_t a) { return e.first < a; });
  if (it == t->entries.end() || it->first != trap) return 0;
  Site* site = it->second;
  auto* uc = static_cast<ucontext_t*>(ucv);
  greg_t* g = uc->uc_mcontext.gregs;
  Regs r{};
  r.rax = g[REG_RAX], r.rcx = g[REG_RCX], r.rdx = g[REG_RDX], r.rsi = g[REG_RSI],
  r.rdi = g[REG_RDI];
  r.r8 = g[REG_R8], r.r9 = g[REG_R9], r.r10 = g[REG_R10], r.r11 = g[REG_R11];
  r.rbx = g[REG_RBX], r.rbp = g[REG_RBP], r.r12 = g[REG_R12], r.r13 = g[REG_R13],
  r.r14 = g[REG_R14];
  r.r15 = g[REG_R15], r.rflags = g[REG_EFL], r.rsp = g[REG_RSP];
  r.rip = site->probe_address;
  entry_dispatcher(site->scheme)(site, &r);
  g[REG_RAX] = r.rax, g[REG_RCX] = r.rcx, g[REG_RDX] = r.rdx, g[REG_RSI] = r.rsi,
  g[REG_RDI] = r.rdi;
  g[REG_R8] = r.r8, g[REG_R9] = r.r9, g[REG_R10] = r.r10, g[REG_R11] = r.r11;
  g[REG_RBX] = r.rbx, g[REG_RBP] = r.rbp, g[REG_R12] = r.r12, g[REG_R13] = r.r13,
  g[REG_R14] = r.r14;
  g[REG_R15] = r.r15;
  return site->resume;
}

// A site that was unpatched and waits until nothing can use it any more.
struct Retired {
  Site* site;
  std::uint64_t epoch;  // Registry::retire_epoch_ when it was retired
};

class Registry {
 public:
  static Registry& get() {
    static Registry* r = new Registry;  // never destroyed: trampolines outlive statics
    return *r;
  }
  // fork: the registry lock is held across it (taken before, released in both processes).
  static void atfork_lock() HP_NO_THREAD_SAFETY_ANALYSIS { get().mu_.lock(); }
  static void atfork_unlock() HP_NO_THREAD_SAFETY_ANALYSIS { get().mu_.unlock(); }

  Mutex mu_;
  FlatMap<SiteKey, Site*, SiteKeyHash> sites_ HP_GUARDED_BY(mu_);
  std::vector<Retired> retired_ HP_GUARDED_BY(mu_);
  std::vector<Consumer*> pending_ HP_GUARDED_BY(mu_);  // consumers whose module is not loaded
  std::uint64_t retire_epoch_ HP_GUARDED_BY(mu_) = 0;
  // Entry trampolines (520 bytes with the vector save, plus the relocated instructions)
  // and int3 copies. Chunks of about 2 MiB (a multiple of the page and the slot): 10,000
  // trampolines take 4 chunks (8 mappings), not 160.
  arch::CodeMemory code_{768, 12288 * 170};
  arch::CodeMemory ret_code_{1024, 64 * 1024};  // return trampolines (one per scheme)
  // Builds entry trampolines from a prototype per kind of site (a copy and a few fields).
  arch::EntryTrampolineBuilder entry_builder_ HP_GUARDED_BY(mu_);
  // The second thread's, while a large batch builds its sites on two (EngineImpl::
  // build_all(), which holds mu_ until that thread is joined).
  arch::EntryTrampolineBuilder helper_builder_ HP_GUARDED_BY(mu_);
  std::atomic<std::uint64_t> next_id_{1};
  std::atomic<std::uint64_t> sites_jmp_{0}, sites_int3_{0};

  // Two per scheme (the dispatcher saves the vector registers where handlers need it): the
  // one hijacked return addresses point at, and the one entry trampolines' landings jump
  // to, which leaves by ret (the landing's call pushed one return-stack-buffer entry more).
  Result<void> ensure_return_trampoline(Scheme s) HP_REQUIRES(mu_) {
    if (return_trampoline(s)) return {};
    std::uintptr_t at[2] = {0, 0};
    for (int by_ret = 0; by_ret < 2; by_ret++) {
      // Anywhere will do: the trampoline is reached through an absolute address.
      auto slot = ret_code_.allocate(reinterpret_cast<std::uint64_t>(&int3_hook));
      if (!slot.ok()) return slot.error();
      arch::ReturnTrampolineSpec spec;
      spec.address = slot->address;
      spec.dispatcher = reinterpret_cast<std::uint64_t>(return_dispatcher(s));
      spec.save_vector = kTrampolinesSaveVectors;
      spec.exit_by_ret = by_ret != 0;
      arch::FastReturn fast;
      if (fast_return_for(s, fast)) spec.fast = &fast;
      auto code = arch::make_return_trampoline(spec);
      if (!code.ok()) return code.error();
      HP_TRY(ret_code_.write(*slot, *code));
      at[by_ret] = slot->address;
    }
    landing_return_[static_cast<int>(s)] = at[1];
    // The entry side of the common return probe, for the fast entry paths (tasks-trace).
    arch::OneReturnEntry one;
    if (s == Scheme::tasks_trace && one_return_entry_for(one)) {
      auto slot = ret_code_.allocate(reinterpret_cast<std::uint64_t>(&int3_hook));
      if (!slot.ok()) return slot.error();
      auto code = arch::make_one_return_entry(one, slot->address);
      if (!code.ok()) return code.error();
      HP_TRY(ret_code_.write(*slot, *code));
      set_one_return_entry(slot->address);
    }
    set_return_trampoline(s, at[0]);
    return {};
  }
  // Where the landings of the scheme's entry trampolines jump (0 until the above).
  std::uintptr_t landing_return_[sync::kSchemeCount] HP_GUARDED_BY(mu_) = {};

  void publish_int3_table() HP_REQUIRES(mu_) {
    auto* t = new Int3Table;
    sites_.for_each([&](const SiteKey&, Site* s) {
      if (s->mode == SiteMode::int3) t->entries.push_back({s->patch_address, s});
    });
    std::sort(t->entries.begin(), t->entries.end());
    Int3Table* old = g_int3_table.exchange(t, std::memory_order_acq_rel);  // I1: matches I2
    if (old) sync::tasks_trace().call([old] { delete old; });
  }

 private:
  Registry() {
    // Everything a trap or a dispatch may need is created now, before anything is
    // patched: creating it later could allocate inside a probed malloc.
    (void)sync::tasks_trace();
    sync::for_each_scheme([](Scheme s) {
      (void)entry_dispatcher(s);
      synchronize(s);  // constructs the scheme's domain
    });
    set_int3_hook(&int3_hook);
    pthread_atfork(&Registry::atfork_lock, &Registry::atfork_unlock, &Registry::atfork_unlock);
  }
};

std::string hex(std::uint64_t v) {
  char b[32];
  std::snprintf(b, sizeof b, "0x%lx", static_cast<unsigned long>(v));
  return b;
}

// Code written in assembly shares tails between functions: glibc's __mempcpy_* jumps to
// the second instruction of __memcpy_*, from outside memcpy's FDE. A place that only its
// FDE sizes is checked against the FDEs around it (kNeighbourBytes each way, decoded from
// their starts, which are instruction boundaries) for a branch into its first bytes
// (lo, hi), where a jump would displace instructions; one found, or code that does not
// decode, sends the site to int3 mode (the caller clears the size).
bool neighbours_branch_into(const elf::ElfFile& file, const elf::ElfFile::Extent& own,
                            std::uintptr_t bias, std::uintptr_t lo, std::uintptr_t hi) {
  constexpr std::uint64_t kNeighbourBytes = 4096;
  auto branches_in = [&](const elf::ElfFile::Extent& e) {
    const std::uintptr_t start = e.file_offset + bias, end = start + e.size;
    for (std::uintptr_t a = start; a < end;) {
      auto insn = arch::decode_shape(
          std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(a),
                                        std::min<std::uintptr_t>(end - a, arch::kMaxInsnLength)),
          a);
      if (!insn.ok()) return true;  // cannot tell: assume the worst
      if (insn->is_relative_branch() && insn->target > lo && insn->target < hi) return true;
      a += insn->length;
    }
    return false;
  };
  // Backwards from the FDE before `own`, forwards from the one after it, over the padding
  // between functions (up to kGap bytes, where the next FDE starts aligned).
  constexpr std::uint64_t kGap = 64;
  auto fde_before = [&](std::uint64_t off) -> std::optional<elf::ElfFile::Extent> {
    for (std::uint64_t k = 1; k <= kGap && k <= off; k++)
      if (auto e = file.cfi_extent(off - k); e && e->size && e->file_offset < off) return e;
    return std::nullopt;
  };
  auto fde_after = [&](std::uint64_t off) -> std::optional<elf::ElfFile::Extent> {
    for (std::uint64_t k = 0; k < kGap; k++)
      if (auto e = file.cfi_extent(off + k); e && e->size && e->file_offset >= off) return e;
    return std::nullopt;
  };
  for (auto e = fde_before(own.file_offset);
       e && own.file_offset - e->file_offset < kNeighbourBytes; e = fde_before(e->file_offset)) {
    if (branches_in(*e)) return true;
  }
  const std::uint64_t own_end = own.file_offset + own.size;
  for (auto e = fde_after(own_end); e && e->file_offset - own_end < kNeighbourBytes;
       e = fde_after(e->file_offset + e->size)) {
    if (branches_in(*e)) return true;
  }
  return false;
}

// A resolved place to probe.
struct Target {
  SiteKey key;
  std::uintptr_t function = 0;  // the containing function's address (0: pending)
  std::uint64_t function_file_offset = 0;
  std::uint64_t function_size = 0;
  std::uint64_t offset = 0;  // probe address - function
  bool has_symbol = false;
  // The place is in a fragment (NAME.cold): entered by a jump from the middle of its
  // function, so flags are live and the stack is the function's (an instruction probe,
  // never a function entry), and no return probe goes there.
  bool fragment = false;
  // No symbol: the extent is its FDE's (elf::ElfFile::cfi_extent), and the place is the
  // entry the loader selected for an IFUNC.
  bool cfi_entry = false;
  bool pending = false;  // the module is not loaded yet: applied when it is
  std::string describe;
  // Filled in by attach() under the registry lock: the site already there, or the index
  // of the batch's job that builds one.
  Site* known = nullptr;
  std::size_t job = 0;
};

// A return probe needs a function's entry, reached by a call: not an offset into one, not
// an address outside every function, not a fragment (NAME.cold, reached by a jump: a
// return probe there would take its function's return address as its own).
Result<void> check_return_place(const ProbeSpec& spec, const Target& tg, const elf::Symbol* sym) {
  if (!spec.on_return) return {};
  if (sym && sym->fragment && tg.offset == 0) {
    std::string_view name = sym->name;
    const std::string parent(name.substr(0, name.find(".cold")));
    return Error(Errc::invalid_argument,
                 "a return probe goes on a function's entry, and '" + tg.describe +
                     "' is a fragment of " + parent +
                     " (its unlikely path, which the compiler moved out of line): it is entered "
                     "by a jump, not a call, so it has no return of its own; probe the return "
                     "of " +
                     parent + " instead, or use an entry probe on the fragment");
  }
  if (tg.offset != 0 || (!sym && !tg.cfi_entry)) {
    return Error(Errc::invalid_argument,
                 "a return probe goes on a function's entry, and '" + tg.describe +
                     "' is not one: drop the offset, or use an entry probe there");
  }
  return {};
}

// A target in a file that is not loaded: applied when a dlopen maps it.
Result<void> resolve_pending(std::string_view path, std::string_view rest, const ProbeSpec& spec,
                             std::vector<Target>& out) {
  auto elf = elf::load_elf(std::string(path));
  if (!elf.ok()) return elf.error();
  auto found = (*elf)->lookup(rest);
  if (!found.ok()) return found.error();
  std::string base(path.substr(path.rfind('/') + 1));
  for (const elf::Target& t : *found) {
    if (t.symbol && t.symbol->is_ifunc()) {
      return Error(Errc::unsupported, std::string(t.symbol->name) +
                                          " is an IFUNC, whose implementation is known only once " +
                                          base + " is loaded: attach after it is loaded");
    }
    Target tg;
    tg.key = {(*elf)->key().dev, (*elf)->key().ino, t.file_offset};
    tg.pending = true;
    tg.offset = t.offset_in_symbol;
    tg.has_symbol = t.symbol != nullptr;
    tg.function_file_offset = t.file_offset - t.offset_in_symbol;
    tg.function_size = t.symbol ? t.symbol->size : 0;
    tg.fragment = t.symbol && t.symbol->fragment;
    tg.describe = base + ":" + (t.symbol ? std::string(t.symbol->name) : std::string());
    if (t.symbol && tg.offset) tg.describe += "+" + hex(tg.offset);
    if (!t.symbol) tg.describe += "fileoff:" + hex(t.file_offset);
    if (!t.symbol) {
      if (auto ext = (*elf)->cfi_extent(t.file_offset)) {  // as resolve() does
        tg.offset = t.file_offset - ext->file_offset;
        tg.function_file_offset = ext->file_offset;
        // Not loaded: the neighbours cannot be read from memory to look for branches into
        // the first bytes (neighbours_branch_into), so the size stays unknown (int3 mode).
        tg.function_size = 0;
        tg.fragment = true;  // an FDE may start a fragment: no entry assumptions
      }
    }
    HP_TRY(check_return_place(spec, tg, t.symbol));
    out.push_back(std::move(tg));
  }
  return {};
}

// Module specs already resolved in this batch, with their symbol tables (a batch of
// 10,000 probes on one library resolves its module and finds its table once, not 10,000
// times). Batches name few modules, mostly one after the other: a short list, last first.
class ModuleCache {
 public:
  struct Entry {
    std::string spec;
    const elf::Module* module;
    std::shared_ptr<const elf::ElfFile> elf;  // null until first asked for
    std::string_view name;                    // module->name()
  };
  Entry* find(std::string_view spec) {
    if (last_ < entries_.size() && entries_[last_].spec == spec) return &entries_[last_];
    for (std::size_t i = 0; i < entries_.size(); i++) {
      if (entries_[i].spec == spec) return &entries_[(last_ = i)];
    }
    return nullptr;
  }
  Entry* add(std::string_view spec, const elf::Module* m) {
    entries_.push_back({std::string(spec), m, nullptr, m->name()});
    last_ = entries_.size() - 1;
    return &entries_.back();
  }
  // The symbol table of the module found last (null before the first).
  const elf::ElfFile* last_elf() const {
    return last_ < entries_.size() ? entries_[last_].elf.get() : nullptr;
  }
  // Scratch list for ElfFile::lookup, reused by every spec of the batch.
  std::vector<elf::Target>& found() { return found_; }

 private:
  std::vector<Entry> entries_;
  std::vector<elf::Target> found_;
  std::size_t last_ = 0;
};

// handlers_need_vector_saves() for the last set of handlers asked about: the specs of a
// batch mostly share their handlers, and the answer depends on nothing else.
class VectorSavesMemo {
 public:
  bool operator()(const ProbeSpec& spec) {
    if (!valid_ || spec.on_entry != on_entry_ || spec.on_return != on_return_ ||
        spec.filter != filter_ || spec.vector_registers != vector_registers_) {
      on_entry_ = spec.on_entry;
      on_return_ = spec.on_return;
      filter_ = spec.filter;
      vector_registers_ = spec.vector_registers;
      saves_ = handlers_need_vector_saves(spec);
      valid_ = true;
    }
    return saves_;
  }

 private:
  hotprobe::Handler on_entry_ = nullptr;
  hotprobe::Handler on_return_ = nullptr;
  hotprobe::Filter filter_ = nullptr;
  bool vector_registers_ = false;
  bool saves_ = false;
  bool valid_ = false;
};

// Appends the targets of `spec` to `out` (one list for the whole batch, not one per spec);
// on failure, `out` may hold some of them (the caller drops them).
Result<void> resolve(const elf::ModuleList& mods, const ProbeSpec& spec, ModuleCache& cache,
                     std::vector<Target>& out) {
  auto colon = spec.target.find(':');
  if (colon == std::string::npos) {
    return Error(Errc::invalid_argument,
                 "probe target '" + spec.target +
                     "' has no ':': write MODULE:SYMBOL, MODULE:SYMBOL+OFFSET, MODULE:0xADDRESS "
                     "(as nm prints it) or MODULE:fileoff:0xOFFSET (MODULE may be empty for "
                     "the program)");
  }
  std::string_view module_spec(spec.target.data(), colon);
  std::string_view rest(spec.target.data() + colon + 1, spec.target.size() - colon - 1);
  if (rest.empty()) {
    return Error(Errc::invalid_argument,
                 "probe target '" + spec.target + "' names no symbol after ':'");
  }
  ModuleCache::Entry* cached = cache.find(module_spec);
  auto mod = cached ? Result<const elf::Module*>(cached->module) : mods.resolve(module_spec);
  if (mod.ok() && !cached) cached = cache.add(module_spec, *mod);
  if (!mod.ok()) {
    // A path to a library that is not loaded yet: the probe waits for its dlopen.
    if (mod.error().code() == Errc::not_found && module_spec.find('/') != std::string_view::npos &&
        ::access(std::string(module_spec).c_str(), R_OK) == 0) {
      return resolve_pending(module_spec, rest, spec, out);
    }
    if (mod.error().code() == Errc::not_found && module_spec.find('/') == std::string_view::npos) {
      return Error(
          Errc::not_found,
          mod.error().message() + "; to probe a library before it is loaded, name it by its path");
    }
    return mod.error();
  }
  if (!cached->elf) {
    auto loaded = mods.elf(**mod);
    if (!loaded.ok()) return loaded.error();
    cached->elf = std::move(*loaded);
  }
  // Found into the batch's list, reused from spec to spec (not a vector per spec).
  std::vector<elf::Target>& found = cache.found();
  found.clear();
  HP_TRY(cached->elf->lookup(rest, found));
  for (const elf::Target& t : found) {
    const elf::Module* m = *mod;
    std::uint64_t file_offset = t.file_offset;
    const elf::Symbol* sym = t.symbol;
    std::uint64_t in_sym = t.offset_in_symbol;
    // An IFUNC's implementation may be in another file: hold it while `sym` is used (the
    // module's own file is held by the cache).
    std::shared_ptr<const elf::ElfFile> holder;
    if (sym && sym->is_ifunc()) {
      // Probe the implementation the loader selected (elf::ModuleList::implementation_of,
      // which resolve_functions uses too).
      auto impl = mods.implementation_of(*m, *sym);
      if (!impl.ok()) return impl.error();
      m = impl->module;
      file_offset = impl->file_offset + in_sym;
      sym = impl->symbol;
      holder = impl->elf;
      in_sym = sym ? file_offset - sym->file_offset : 0;
    }
    auto addr = m->offset_to_address(file_offset);
    if (!addr.ok()) return addr.error();
    Target tg;
    tg.key = {m->key.dev, m->key.ino, file_offset};
    tg.offset = in_sym;
    tg.function_file_offset = file_offset - in_sym;
    tg.has_symbol = sym != nullptr;
    tg.fragment = sym && sym->fragment;
    if (sym) {
      tg.function = *addr - in_sym;
      tg.function_size = sym->size;
      // The module's name, found once per batch (a search for the path's last '/').
      const std::string_view name = m == cached->module ? cached->name : m->name();
      tg.describe.reserve(name.size() + 1 + sym->name.size());
      tg.describe.append(name).append(":").append(sym->name);
      if (in_sym) tg.describe += "+" + hex(in_sym);
    } else {
      tg.function = *addr;
      tg.function_size = 0;
      tg.describe = std::string(m->name()) + ":fileoff:" + hex(file_offset);
      if (holder) {  // name the IFUNC the user wrote, and where its implementation is
        tg.describe = std::string(cached->name) + ":" + std::string(t.symbol->name) +
                      " (its implementation at " + tg.describe + ")";
      }
      // No symbol sizes the code (an IFUNC's implementation written in assembly, a
      // stripped file): its FDE does, and the jump needs the whole function (to find the
      // branches into the bytes it displaces).
      const elf::ElfFile* file = holder ? holder.get() : cached->elf.get();
      if (auto ext = file->cfi_extent(file_offset)) {
        tg.offset = file_offset - ext->file_offset;
        tg.function = *addr - tg.offset;
        tg.function_file_offset = ext->file_offset;
        tg.function_size = ext->size;
        // What the loader returned for an IFUNC is a function's entry; an FDE of a
        // stripped file may as well start a fragment (NAME.cold), entered by a jump.
        tg.cfi_entry = holder != nullptr;
        tg.fragment = !tg.cfi_entry;
        if (tg.offset) tg.describe += " (+" + hex(tg.offset) + " into its FDE)";
        // The jump displaces at most the instructions that start below its 5th byte.
        const std::uintptr_t at = *addr;
        if (neighbours_branch_into(*file, *ext, at - file_offset, at, at + 5 + 15)) {
          tg.function_size = 0;  // int3 mode: a neighbour enters the bytes a jump would take
          tg.describe += " (a neighbouring function jumps into its first bytes)";
        }
      }
    }
    HP_TRY(check_return_place(spec, tg, sym));
    out.push_back(std::move(tg));
  }
  return {};
}

}  // namespace

// ---------------------------------------------------------------------------------------

struct EngineImpl {
  hotprobe::EngineOptions options;
  // Not shrunk: attach only fills it (set_many), and a table that shrank after a batch's
  // detach was allocated and rehashed again by the next batch.
  FlatMap<std::uint64_t, Consumer*, std::hash<std::uint64_t>, /*Shrink=*/false> consumers
      HP_GUARDED_BY(Registry::get().mu_);
  std::atomic<std::uint64_t> grace_periods{0};

  // What building a site takes besides its target and spec, the same for every site of a
  // batch: worked out once under the registry lock, so that the sites of a large batch
  // can be built on two threads (each with its own trampoline builder; CodeMemory locks
  // itself).
  struct BuildEnv {
    Scheme scheme = Scheme::tasks_trace;
    std::uint32_t return_depth = 0;
    std::uint64_t dispatcher = 0;
    std::uintptr_t landing_target = 0;  // where landings jump; 0: no landings
    bool fast_ok = false;               // `fast` applies (but for .consumers, each site's)
    arch::FastEntry fast;
  };
  BuildEnv build_env(Registry& reg) HP_REQUIRES(reg.mu_) {
    BuildEnv env;
    env.scheme = options.scheme;
    env.return_depth = options.return_stack_depth;
    env.dispatcher = reinterpret_cast<std::uint64_t>(entry_dispatcher(options.scheme));
    // At a function's entry, a landing for return probes (any consumer may add one).
    if (reg.ensure_return_trampoline(options.scheme).ok())
      env.landing_target = reg.landing_return_[static_cast<int>(options.scheme)];
    Site layout;  // fast_entry_for() reads the scheme and the consumers' address
    layout.scheme = options.scheme;
    env.fast_ok = fast_entry_for(layout, env.fast);
    return env;
  }

  // Builds a new site for `t` (not yet patched, not yet in the registry).
  Result<Site*> build_site(const Target& t, const ProbeSpec& spec, Registry& reg)
      HP_REQUIRES(reg.mu_) {
    return build_site(t, spec, build_env(reg), reg.entry_builder_, reg.code_, std::nullopt);
  }
  // A slot allocated ahead for a site (near its probe address), freed unless taken.
  class ReservedSlot {
   public:
    ReservedSlot(arch::CodeMemory& code, std::optional<arch::CodeSlot> slot)
        : code_(code), slot_(slot) {}
    ~ReservedSlot() {
      if (slot_) code_.free(*slot_);
    }
    ReservedSlot(const ReservedSlot&) = delete;
    ReservedSlot& operator=(const ReservedSlot&) = delete;
    // The reserved slot if it reaches `near`, else a new one.
    Result<arch::CodeSlot> take(std::uint64_t near) {
      if (slot_ && arch::slot_reaches(*slot_, near)) return *std::exchange(slot_, std::nullopt);
      return code_.allocate(near);
    }

   private:
    arch::CodeMemory& code_;
    std::optional<arch::CodeSlot> slot_;
  };
  static Result<Site*> build_site(const Target& t, const ProbeSpec& spec, const BuildEnv& env,
                                  arch::EntryTrampolineBuilder& builder, arch::CodeMemory& code,
                                  std::optional<arch::CodeSlot> reserved) {
    ReservedSlot slots(code, reserved);
    auto site = std::make_unique<Site>();
    site->dev = t.key.dev;
    site->ino = t.key.ino;
    site->file_offset = t.key.off;
    site->scheme = env.scheme;
    site->return_depth = env.return_depth;
    const std::uintptr_t probe = t.function + t.offset;
    site->probe_address = probe;
    std::span<const std::uint8_t> fn(reinterpret_cast<const std::uint8_t*>(t.function),
                                     t.function_size ? t.function_size : t.offset + 16);

    Error jmp_error;
    if (!spec.force_int3 && t.function_size) {
      auto plan = arch::plan_displacement(fn, t.function, t.offset);
      if (plan.ok() && t.fragment) {
        // Not a function's entry: flags are live, the stack is the parent function's.
        plan->at_entry = false;
        plan->flags_live = true;
      }
      if (plan.ok()) {
        auto slot = slots.take(plan->patch_address);
        if (slot.ok()) {
          arch::EntryTrampolineSpec ts;
          ts.address = slot->address;
          ts.context = reinterpret_cast<std::uint64_t>(site.get());
          ts.dispatcher = env.dispatcher;
          ts.save_vector = kTrampolinesSaveVectors;
          if (plan->at_entry && !plan->flags_live) ts.landing_target = env.landing_target;
          ts.run_at_ret = is_ret_site_handler(spec.on_entry);  // core/ret_probe.h
          if (ts.run_at_ret) ts.landing_target = 0;
          arch::FastEntry fast = env.fast;
          fast.consumers = reinterpret_cast<std::uint64_t>(&site->consumers);
          if (env.fast_ok) ts.fast = &fast;
          auto tramp = builder.build(ts, *plan);
          if (tramp.ok() && ts.fast && tramp->code.size() > slot->size) {
            ts.fast = nullptr;  // long relocated code: the plain call to the dispatcher fits
            tramp = builder.build(ts, *plan);
          }
          std::uint8_t patch[32];
          HP_CHECK(plan->length <= sizeof patch);  // whole instructions from below the 5th byte
          auto bytes =
              arch::write_jmp_patch_bytes(plan->patch_address, plan->length, slot->address, patch);
          const auto inside = [&](const arch::OffsetPair& p) {
            return p.original > 0 && p.original < plan->length;
          };
          const bool map_fits =
              !tramp.ok() || static_cast<std::size_t>(std::count_if(
                                 tramp->map.begin(), tramp->map.end(), inside)) <= IpMap::kCapacity;
          if (tramp.ok() && bytes.ok() && map_fits && tramp->code.size() <= slot->size) {
            if (auto w = code.write(*slot, tramp->code); !w.ok()) {
              code.free(*slot);
              return w.error();
            }
            site->mode = SiteMode::jmp;
            site->patch_address = plan->patch_address;
            site->at_entry = plan->at_entry;
            site->original = std::span<const std::uint8_t>(plan->original);
            site->patched = std::span<const std::uint8_t>(patch, plan->length);
            site->trampoline = slot->address;
            site->trampoline_size = static_cast<std::uint32_t>(tramp->code.size());
            site->landing = tramp->landing_offset ? slot->address + tramp->landing_offset : 0;
            site->slot_chunk = slot->chunk;
            site->slot_index = slot->index;
            for (const arch::OffsetPair& p : tramp->map) {
              if (inside(p)) site->ip_map.push_back({p.original, slot->address + p.relocated});
            }
            builder.recycle(std::move(*tramp));
            if (debug_sites()) std::fprintf(stderr, "hotprobe: %s: jmp site\n", t.describe.c_str());
            return site.release();
          }
          code.free(*slot);
          jmp_error = !tramp.ok()   ? tramp.error()
                      : !bytes.ok() ? bytes.error()
                      : !map_fits   ? Error(Errc::internal,
                                            "more than 4 instructions start inside the displaced "
                                              "bytes (a decoder bug): report it with the function's "
                                              "bytes")
                                    : Error(Errc::internal, "trampoline of " +
                                                                std::to_string(tramp->code.size()) +
                                                                " bytes larger than its slot");
        } else {
          jmp_error = slot.error();
        }
      } else {
        jmp_error = plan.error();
      }
      if (!spec.allow_int3) {
        return Error(jmp_error.code(), t.describe + ": " + jmp_error.message() +
                                           " (and int3 mode is disabled for this probe)");
      }
    }
    if (!spec.allow_int3 && !spec.force_int3) {
      return Error(Errc::not_relocatable, t.describe +
                                              ": the function size is unknown (no symbol "
                                              "with a size, no FDE in .eh_frame), so a jump "
                                              "cannot be placed safely, and int3 mode is "
                                              "disabled: allow int3 mode, or probe a sized "
                                              "function (a build with symbols)");
    }
    // int3 mode.
    auto iplan = arch::plan_int3(fn, t.function, t.offset);
    if (!iplan.ok())
      return Error(iplan.error().code(), t.describe + ": " + iplan.error().message());
    auto slot = slots.take(probe);
    if (!slot.ok()) return Error(slot.error().code(), t.describe + ": " + slot.error().message());
    auto copy = arch::make_int3_copy(*iplan, slot->address);
    if (!copy.ok()) {
      code.free(*slot);
      return Error(copy.error().code(), t.describe + ": " + copy.error().message());
    }
    if (auto w = code.write(*slot, copy->code); !w.ok()) {
      code.free(*slot);
      return w.error();
    }
    site->mode = SiteMode::int3;
    site->patch_address = probe;
    site->at_entry = t.offset == 0 && t.function_size && !t.fragment;
    site->original = {iplan->original[0]};
    site->patched = {0xCC};
    site->resume = slot->address;
    site->copy_chunk = slot->chunk;
    site->copy_index = slot->index;
    site->trampoline = slot->address;
    site->trampoline_size = static_cast<std::uint32_t>(copy->code.size());
    site->slot_chunk = slot->chunk;
    site->slot_index = slot->index;
    if (debug_sites()) {
      std::fprintf(stderr, "hotprobe: %s: int3 site (%s)\n", t.describe.c_str(),
                   spec.force_int3 ? "int3 mode asked for"
                   : t.function_size == 0
                       ? "the function's size is unknown: no sized symbol, no FDE"
                       : jmp_error.message().c_str());
    }
    return site.release();
  }
  // HOTPROBE_DEBUG: each site built says its mode (and why int3). Read when the library
  // loads: the agent clears HOTPROBE_* from the environment once its session starts.
  static bool debug_sites() { return g_debug_sites; }

  // A site a batch builds: for the first target that names its place.
  struct BuildJob {
    std::size_t target = 0;
    std::size_t spec = 0;
    Site* site = nullptr;  // null: the build failed with `error`
    Error error;
    bool listed = false;  // in the batch's list of fresh sites
  };
  // How far ahead a pass over a batch's targets prefetches what a later one will look up
  // (each lookup in a table of 10,000 sites is a cache miss of about 100 ns here).
  static constexpr std::size_t kLookAhead = 8;
  // From this many specs a batch may take a second thread (BatchHelper) for resolving and
  // building; below, starting one costs more than it could take (30-60 us, about the
  // time of 50 probes). Only when HOTPROBE_BATCH_THREADS=2: once the passes missed the
  // cache less (the arena, the lookahead, set_many), one thread did as well here with
  // half the CPU (docs/design.md, "What a batch costs").
  static constexpr std::size_t kTwoThreads = 1024;
  static bool two_threads_asked() {
    const char* v = std::getenv("HOTPROBE_BATCH_THREADS");
    return v && std::atoi(v) >= 2;
  }
  // Chunks of a parallel pass: small enough that the thread that comes late finds some
  // left, large enough that taking one (an atomic add, one CodeMemory lock) is noise.
  static constexpr std::size_t kResolveChunk = 256;
  static constexpr std::size_t kBuildChunk = 128;

  // Builds every job's site, in chunks on this thread and the batch's helper. A chunk
  // touches only its jobs, its thread's trampoline builder, CodeMemory (which locks
  // itself; a chunk's slots under one lock), the heap and the functions' bytes.
  void build_all(std::span<BuildJob> jobs, std::span<const Target> targets,
                 std::span<const ProbeSpec> specs, Registry& reg, BatchHelper& helper)
      HP_REQUIRES(reg.mu_) {
    if (jobs.empty()) return;
    const BuildEnv env = build_env(reg);
    arch::CodeMemory& code = reg.code_;
    arch::EntryTrampolineBuilder* builders[2] = {&reg.entry_builder_, &reg.helper_builder_};
    helper.run(jobs.size(), kBuildChunk, [&](int worker, std::size_t begin, std::size_t end) {
      // The caller's thread carves from the batch's scope (attach()), the helper from one
      // of its own per chunk.
      std::optional<BatchArena::Scope> scope;
      if (worker != 0) scope.emplace();
      std::vector<std::uint64_t> near;
      near.reserve(end - begin);
      for (std::size_t n = begin; n < end; n++)
        near.push_back(targets[jobs[n].target].function + targets[jobs[n].target].offset);
      std::vector<Result<arch::CodeSlot>> slots = code.allocate_many(near);
      for (std::size_t n = begin; n < end; n++) {
        BuildJob& j = jobs[n];
        Result<arch::CodeSlot>& slot = slots[n - begin];
        auto built = build_site(targets[j.target], specs[j.spec], env, *builders[worker], code,
                                slot.ok() ? std::optional(*slot) : std::nullopt);
        if (built.ok())
          j.site = *built;
        else
          j.error = built.error();
      }
    });
  }

  // Patched bytes may not overlap: two probes a few bytes apart (malloc and malloc+2)
  // would have the first's jump cover the second. Among the batch's new sites, every jmp
  // site whose patch overlaps another site's is built again in int3 mode (one byte at
  // its own address; the relocated copy of the first instruction runs into the second's
  // int3, so both hit). A new probe inside the bytes an existing jmp site displaced into
  // its trampoline is refused: that code no longer runs from its place (attach both in
  // one batch, or detach the other first). A new jmp site over an existing one's bytes
  // becomes int3 as well.
  void separate_overlaps(std::span<BuildJob> jobs, std::span<const Target> targets,
                         std::span<const ProbeSpec> specs, Registry& reg) HP_REQUIRES(reg.mu_) {
    struct Range {
      std::uintptr_t start, end;
      std::size_t job;  // jobs.size() for an existing site
      const Site* site;
    };
    auto range_of = [](const Site* s, std::size_t job) {
      return Range{s->patch_address, s->patch_address + s->patched.size(), job, s};
    };
    // The sites already there that could touch the batch's: the whole registry when it
    // is not much larger than the batch, else the few keys around each new place (a
    // patch starts at most 4 bytes after its probe, endbr64, and holds at most 15), so
    // attaching one probe at a time to a process with 10,000 costs 40 lookups, not a
    // walk of the registry.
    std::vector<Range> old;
    if (reg.sites_.size() <= 8 * jobs.size()) {
      reg.sites_.for_each([&](const SiteKey&, Site* s) {
        if (s->patched.size() > 0) old.push_back(range_of(s, jobs.size()));
      });
    } else {
      constexpr std::uint64_t kReach = 4 + PatchBytes::kCapacity + 1;
      for (const BuildJob& j : jobs) {
        const SiteKey& k = targets[j.target].key;
        for (std::uint64_t q = k.off > kReach ? k.off - kReach : 0; q < k.off + kReach; q++) {
          if (Site* s = reg.sites_.get({k.dev, k.ino, q}); s && s->patched.size() > 0)
            old.push_back(range_of(s, jobs.size()));
        }
      }
    }
    std::sort(old.begin(), old.end(),
              [](const Range& a, const Range& b) { return a.start < b.start; });
    old.erase(std::unique(old.begin(), old.end(),
                          [](const Range& a, const Range& b) { return a.site == b.site; }),
              old.end());
    // The existing site whose patch holds [start, end), if any.
    auto old_over = [&](std::uintptr_t start, std::uintptr_t end) -> const Site* {
      auto it = std::lower_bound(old.begin(), old.end(), end,
                                 [](const Range& r, std::uintptr_t e) { return r.start < e; });
      // The ranges do not overlap one another, so only the one before `end` can hold it.
      if (it == old.begin()) return nullptr;
      --it;
      return it->end > start ? it->site : nullptr;
    };
    std::vector<bool> to_int3(jobs.size(), false);
    std::vector<Range> fresh;
    for (std::size_t n = 0; n < jobs.size(); n++) {
      BuildJob& j = jobs[n];
      const Target& t = targets[j.target];
      const std::uintptr_t probe = t.function + t.offset;
      if (!old.empty()) {
        if (const Site* o = old_over(probe, probe + 1); o && o->mode == SiteMode::jmp) {
          if (j.site) free_sites(std::span<Site* const>(&j.site, 1), reg);
          j.site = nullptr;
          j.error = Error(Errc::busy,
                          t.describe + " lies in the " + std::to_string(o->patched.size()) +
                              " bytes at " + hex(o->patch_address) +
                              " that the probe there moved into its trampoline, so the code at " +
                              hex(probe) +
                              " no longer runs from its place: attach both probes in one batch "
                              "(hotprobe then puts both in int3 mode), or detach the other "
                              "first");
          continue;
        }
      }
      if (!j.site) continue;
      if (!old.empty() && j.site->mode == SiteMode::jmp &&
          old_over(j.site->patch_address, j.site->patch_address + j.site->patched.size())) {
        to_int3[n] = true;
      }
      fresh.push_back(range_of(j.site, n));
    }
    std::sort(fresh.begin(), fresh.end(),
              [](const Range& a, const Range& b) { return a.start < b.start; });
    for (std::size_t a = 0; a < fresh.size(); a++) {
      for (std::size_t b = a + 1; b < fresh.size() && fresh[b].start < fresh[a].end; b++) {
        for (const Range* r : {&fresh[a], &fresh[b]}) {
          if (r->site->mode == SiteMode::jmp) to_int3[r->job] = true;
        }
      }
    }
    if (std::find(to_int3.begin(), to_int3.end(), true) == to_int3.end()) return;
    const BuildEnv env = build_env(reg);
    for (std::size_t n = 0; n < jobs.size(); n++) {
      if (!to_int3[n]) continue;
      BuildJob& j = jobs[n];
      const Target& t = targets[j.target];
      free_sites(std::span<Site* const>(&j.site, 1), reg);
      j.site = nullptr;
      ProbeSpec spec = specs[j.spec];
      if (!spec.allow_int3) {
        j.error = Error(Errc::not_relocatable,
                        t.describe +
                            ": its 5-byte jump would overlap the patch of another probe a few "
                            "bytes away, and int3 mode is disabled for this probe");
        continue;
      }
      spec.force_int3 = true;
      auto built = build_site(t, spec, env, reg.entry_builder_, reg.code_, std::nullopt);
      if (built.ok())
        j.site = *built;
      else
        j.error = built.error();
    }
  }

  // Takes t.describe: the target is not used after its consumer is made.
  // `saves_vectors`: handlers_need_vector_saves(spec), which a batch works out once per set
  // of handlers (VectorSavesMemo).
  Consumer* make_consumer(const ProbeSpec& spec, Target& t, Site* site, Registry& reg,
                          bool saves_vectors) {
    auto* c = new Consumer;
    c->id = reg.next_id_.fetch_add(1, std::memory_order_relaxed);
    c->on_entry = spec.on_entry;
    c->on_return = spec.on_return;
    c->filter = spec.filter;
    c->cookie = spec.cookie;
    c->engine = this;
    c->site = site;
    c->vector_registers = spec.vector_registers;
    c->saves_vectors = saves_vectors;
    c->allow_int3 = spec.allow_int3;
    c->force_int3 = spec.force_int3;
    c->dev = t.key.dev;
    c->ino = t.key.ino;
    c->file_offset = t.key.off;
    c->function_file_offset = t.function_file_offset;
    c->function_size = t.function_size;
    c->offset = t.offset;
    c->has_symbol = t.has_symbol;
    c->fragment = t.fragment;
    c->describe = std::move(t.describe);
    return c;
  }

  // Frees sites no thread can reach any more: their trampoline slots under one lock
  // (this runs on the grace-period worker while the next batch may be allocating slots),
  // their last consumer arrays, and the sites.
  static void free_sites(std::span<Site* const> sites, Registry& reg) {
    std::vector<arch::CodeSlot> slots;
    slots.reserve(sites.size());
    for (Site* s : sites) {
      if (!s->trampoline) continue;
      arch::CodeSlot slot;
      slot.address = s->trampoline;
      slot.chunk = s->slot_chunk;
      slot.index = s->slot_index;
      slot.size = reg.code_.slot_size();
      slots.push_back(slot);
    }
    reg.code_.free_many(slots);
    for (Site* s : sites) {
      ConsumerArray::destroy(s->consumers.load(std::memory_order_relaxed));
      delete s;
    }
  }

  static PatchSite patch_for(const Site* s, bool attach) {
    PatchSite p;
    p.addr = s->patch_address;
    p.old_bytes = attach ? s->original : s->patched;
    p.new_bytes = attach ? s->patched : s->original;
    if (s->mode == SiteMode::jmp) {
      // A thread trapped during the window goes through the trampoline: the probe (with
      // whatever consumers are published) and then the displaced instructions.
      p.trap_target = s->trampoline;
      if (attach) p.ip_map = s->ip_map;
    } else {
      p.trap_target = s->resume;  // the int3 hook runs first while the site is listed
    }
    return p;
  }

  // Consumer arrays and consumers that readers of one scheme may still hold: deleted
  // together after one grace period of that scheme (a batch queues one callback per
  // scheme, not one per site).
  struct Garbage {
    std::vector<ConsumerArray*> arrays;
    std::vector<Consumer*> consumers;
    bool empty() const { return arrays.empty() && consumers.empty(); }
  };
  static void retire(Scheme scheme, Garbage&& garbage) {
    if (garbage.empty()) return;
    auto* g = new Garbage(std::move(garbage));
    call_after_grace_period(
        scheme,
        [](void* p) {
          auto* g = static_cast<Garbage*>(p);
          for (ConsumerArray* a : g->arrays)
            ConsumerArray::destroy(a);
          for (Consumer* c : g->consumers)
            delete c;
          delete g;
        },
        g);
  }

  // Replaces the site's consumer array; the old one goes to `garbage`, which the caller
  // retires under the site's scheme.
  static void publish_into(Site* s, Garbage& garbage) {
    ConsumerArray* fresh = ConsumerArray::make(s->members);
    ConsumerArray* old = s->consumers.exchange(fresh, std::memory_order_acq_rel);  // P1: matches P2
    if (old) garbage.arrays.push_back(old);
  }

  // Replaces the site's consumer array; the old array and `freed` consumers are deleted
  // after a grace period of the site's scheme (never on this path).
  static void publish(Site* s, std::vector<Consumer*> freed) {
    Garbage g;
    g.consumers = std::move(freed);
    publish_into(s, g);
    retire(s->scheme, std::move(g));
  }

  // A stretch of a batch's specs, resolved: results[i] for spec i (an empty list of
  // handles when it resolved), its targets, and ends[i] = targets.size() after spec i.
  struct ResolvedPart {
    std::vector<Result<std::vector<Handle>>> results;
    std::vector<Target> targets;
    std::vector<std::size_t> ends;
    bool any_error = false;
  };
  static void resolve_part(const Result<elf::ModuleList>& mods, std::span<const ProbeSpec> specs,
                           ResolvedPart& out) {
    ModuleCache module_cache;
    out.results.reserve(specs.size());
    out.targets.reserve(specs.size());
    out.ends.reserve(specs.size());
    // Looking ahead: the name's slot for the spec 4 on, its symbol for the spec 2 on,
    // in the symbol table of the module last used (a batch mostly names one), after the
    // spec 8 on's own text. Each is a cache miss of about 100 ns in a batch of 10,000.
    auto name_of = [](const ProbeSpec& s) {
      const std::size_t colon = s.target.find(':');
      return colon == std::string::npos ? std::string_view()
                                        : std::string_view(s.target).substr(colon + 1);
    };
    for (std::size_t n = 0; n < specs.size(); n++) {
      const ProbeSpec& spec = specs[n];
      if (n + 8 < specs.size()) __builtin_prefetch(specs[n + 8].target.data());
      if (const elf::ElfFile* last = module_cache.last_elf()) {
        if (n + 4 < specs.size()) last->prefetch_slot(name_of(specs[n + 4]));
        if (n + 2 < specs.size()) last->prefetch_symbol(name_of(specs[n + 2]));
      }
      const std::size_t start = out.targets.size();
      if (!spec.on_entry && !spec.on_return) {
        out.results.push_back(
            Error(Errc::invalid_argument,
                  "probe '" + spec.target + "' has neither an entry nor a return handler"));
      } else if (!mods.ok()) {
        out.results.push_back(mods.error());
      } else if (auto t = resolve(mods.value(), spec, module_cache, out.targets); !t.ok()) {
        out.results.push_back(t.error());
      } else {
        out.results.push_back(std::vector<Handle>{});
        out.ends.push_back(out.targets.size());
        continue;
      }
      out.targets.resize(start);  // what a failed spec appended
      out.ends.push_back(start);
      out.any_error = true;
    }
  }

  std::vector<Result<std::vector<Handle>>> attach(std::span<const ProbeSpec> specs,
                                                  BatchMode mode) {
    RetProbeBatch ret_probes;  // return probes on `ret` instructions (core/ret_probe.h)
    if (ret_probes.expand(specs)) {
      return ret_probes.attach(
          mode, [this](std::span<const ProbeSpec> s, BatchMode m) { return attach(s, m); },
          [this](std::span<const Handle> h) { (void)detach(h, true); });
    }
    std::vector<Result<std::vector<Handle>>> results;
    results.reserve(specs.size());
    Registry& reg = Registry::get();
    if (std::any_of(specs.begin(), specs.end(),
                    [](const ProbeSpec& s) { return s.on_return != nullptr; })) {
      ensure_unwinder_probes();
    }
    // Started first: it takes a millisecond to get the other CPU.
    std::optional<BatchHelper> helper(std::in_place,
                                      specs.size() >= kTwoThreads && two_threads_asked());
    auto mods = elf::ModuleList::of_self();
    // Every spec's targets in one list: spec i's are [first[i], first[i + 1]). Resolved in
    // chunks (on two threads in a large batch: the module list and the symbol tables are
    // only read), put together in order.
    // On one thread, one part: the batch resolves straight into its lists.
    const std::size_t chunk =
        helper->two_threads() ? kResolveChunk : std::max<std::size_t>(specs.size(), 1);
    std::vector<ResolvedPart> parts((specs.size() + chunk - 1) / chunk);
    helper->run(specs.size(), chunk, [&](int, std::size_t begin, std::size_t end) {
      resolve_part(mods, specs.subspan(begin, end - begin), parts[begin / chunk]);
    });
    std::vector<Target> targets;
    std::vector<std::size_t> first(specs.size() + 1, 0);
    bool any_error = false;
    if (parts.size() == 1) {
      results = std::move(parts[0].results);
      targets = std::move(parts[0].targets);
      for (std::size_t i = 0; i < parts[0].ends.size(); i++)
        first[i + 1] = parts[0].ends[i];
      any_error = parts[0].any_error;
    } else {
      std::size_t total = 0;
      for (const ResolvedPart& p : parts)
        total += p.targets.size();
      targets.reserve(total);
      std::size_t i = 0;
      for (ResolvedPart& p : parts) {
        const std::size_t base = targets.size();
        for (std::size_t end : p.ends)
          first[++i] = base + end;
        std::move(p.results.begin(), p.results.end(), std::back_inserter(results));
        std::move(p.targets.begin(), p.targets.end(), std::back_inserter(targets));
        any_error |= p.any_error;
      }
    }
    if (any_error && mode == BatchMode::all_or_nothing) return fail_all(results, specs);

    MutexLock lock(reg.mu_);
    Registry::get().mu_.assert_held();  // the analysis names the lock Registry::get().mu_
    // The batch's sites, consumers and consumer arrays, one after the other in memory.
    BatchArena::Scope arena;
    // Sized for the batch up front: a batch of 10,000 probes rehashes nothing.
    std::vector<Site*> fresh;  // new sites, patched together (and published once each)
    fresh.reserve(targets.size());
    // The new sites first, all together (on two threads in a large batch): one for each
    // place no site probes yet, built for the first spec that names it. `jobs` is sized
    // for every target, so the map's pointers into it stay put.
    std::vector<BuildJob> jobs;
    jobs.reserve(targets.size());
    FlatMap<SiteKey, BuildJob*, SiteKeyHash> job_by_key;
    job_by_key.reserve(targets.size());
    for (std::size_t i = 0; i < specs.size(); i++) {
      if (!results[i].ok()) continue;
      for (std::size_t k = first[i]; k < first[i + 1]; k++) {
        Target& t = targets[k];
        if (t.pending) continue;
        if (k + kLookAhead < targets.size()) {
          reg.sites_.prefetch(targets[k + kLookAhead].key);
          job_by_key.prefetch(targets[k + kLookAhead].key);
        }
        if ((t.known = reg.sites_.get(t.key))) continue;
        if (const BuildJob* j = job_by_key.get(t.key)) {
          t.job = static_cast<std::size_t>(j - jobs.data());
          continue;
        }
        t.job = jobs.size();
        jobs.push_back({k, i});
        job_by_key.set(t.key, &jobs.back());
      }
    }
    build_all(jobs, targets, specs, reg, *helper);
    separate_overlaps(jobs, targets, specs, reg);
    helper.reset();  // no second CPU spinning through the patching
    std::vector<std::pair<std::size_t, Consumer*>> made;  // (spec index, consumer)
    made.reserve(specs.size());
    std::unordered_set<Site*> touched_old;  // sites that were there before the batch
    struct Mine {
      Site* site;
      Consumer* consumer;
      bool fresh;
    };
    std::vector<Mine> mine;
    VectorSavesMemo vector_saves;
    for (std::size_t i = 0; i < specs.size(); i++) {
      if (!results[i].ok()) continue;
      const ProbeSpec& spec = specs[i];
      bool failed = false;
      mine.clear();
      for (std::size_t k = first[i]; k < first[i + 1]; k++) {
        Target& t = targets[k];
        if (t.pending) {
          mine.push_back(
              {nullptr, make_consumer(spec, t, nullptr, reg, vector_saves(spec)), false});
          continue;
        }
        Site* site = t.known;
        bool is_fresh = false;
        if (!site) {
          BuildJob& job = jobs[t.job];
          if (!job.site) {
            results[i] = job.error;
            failed = true;
            break;
          }
          site = job.site;
          is_fresh = true;
          if (!job.listed) fresh.push_back(site);
          job.listed = true;
        }
        if (site->scheme != options.scheme) {
          results[i] =
              Error(Errc::already_attached, t.describe + " is already probed under the " +
                                                std::string(hotprobe::to_string(site->scheme)) +
                                                " scheme, this engine uses " +
                                                std::string(hotprobe::to_string(options.scheme)) +
                                                ": use one scheme per function");
          failed = true;
          break;
        }
        if (spec.on_return) {
          if (auto r = reg.ensure_return_trampoline(options.scheme); !r.ok()) {
            results[i] = r.error();
            failed = true;
            break;
          }
        }
        mine.push_back({site, make_consumer(spec, t, site, reg, vector_saves(spec)), is_fresh});
      }
      if (failed) {
        for (Mine& m : mine)
          delete m.consumer;
        any_error = true;
        continue;
      }
      for (auto& [s, c, is_fresh] : mine) {
        if (s) {
          s->members.push_back(c);
          if (!is_fresh) touched_old.insert(s);
        } else {
          reg.pending_.push_back(c);
        }
        made.push_back({i, c});
        // Handed out here, while the consumer and the result are in cache (a later pass
        // over 10,000 of them missed it twice per probe); the consumers map takes them
        // all at the end, in the order of its slots (register_consumers()).
        results[i]->push_back(Handle{c->id});
      }
    }
    // Sites built for specs that failed on a later target: never published, never
    // patched, so no thread can reach them.
    std::vector<Site*> unused;
    for (BuildJob& j : jobs) {
      if (j.site && (!j.listed || j.site->members.empty())) unused.push_back(j.site);
    }
    if (!unused.empty()) {
      fresh.erase(std::remove_if(fresh.begin(), fresh.end(),
                                 [](const Site* s) { return s->members.empty(); }),
                  fresh.end());
      free_sites(unused, reg);
    }
    auto undo_fresh = [&] { free_sites(fresh, reg); };
    if (any_error && mode == BatchMode::all_or_nothing) {
      for (auto& [i, c] : made) {
        auto& mem = c->site ? c->site->members : reg.pending_;
        mem.erase(std::remove(mem.begin(), mem.end(), c), mem.end());
        delete c;
      }
      undo_fresh();
      return fail_all(results, specs);
    }
    // Publish consumers first, so a thread that reaches a new site already finds them.
    for (Site* s : fresh)
      publish(s, {});
    for (Site* s : touched_old)
      publish(s, {});
    if (!fresh.empty()) {
      std::vector<PatchSite> patches;
      patches.reserve(fresh.size());
      bool any_int3 = false;
      for (Site* s : fresh) {
        patches.push_back(patch_for(s, true));
        any_int3 |= s->mode == SiteMode::int3;
      }
      if (any_int3) {
        for (Site* s : fresh)
          reg.sites_.set({s->dev, s->ino, s->file_offset}, s);
        reg.publish_int3_table();
      }
      auto applied = apply_patches(patches);
      if (!applied.ok()) {
        for (Site* s : fresh)
          reg.sites_.erase({s->dev, s->ino, s->file_offset});
        if (any_int3) reg.publish_int3_table();
        // Nothing was patched: the fresh sites were reachable by no thread (only through
        // the int3 table, which tasks-trace protects); free them after a grace period.
        // A spec with a target among them fails whole: its consumers on sites that were
        // there before are taken off again, and none of its handles is handed out.
        const std::unordered_set<Site*> unpatched(fresh.begin(), fresh.end());
        for (auto& [i, c] : made) {
          if (c->site && unpatched.count(c->site)) {
            results[i] =
                Error(applied.error().code(), "could not patch: " + applied.error().message());
          }
        }
        std::vector<Consumer*> dead_consumers;
        for (auto& [i, c] : made) {
          if (results[i].ok()) continue;
          if (!c->site) {
            reg.pending_.erase(std::remove(reg.pending_.begin(), reg.pending_.end(), c),
                               reg.pending_.end());
            delete c;
          } else if (unpatched.count(c->site)) {
            dead_consumers.push_back(c);
          } else {
            auto& mem = c->site->members;
            mem.erase(std::remove(mem.begin(), mem.end(), c), mem.end());
            publish(c->site, {c});
          }
        }
        std::vector<Site*> dead = fresh;
        sync::tasks_trace().call([dead, dead_consumers] {
          free_sites(dead, Registry::get());
          for (Consumer* c : dead_consumers)
            delete c;
        });
        register_consumers(made, results);
        return results;
      }
      std::vector<std::pair<SiteKey, Site*>> keyed;
      keyed.reserve(fresh.size());
      for (Site* s : fresh) {
        keyed.push_back({{s->dev, s->ino, s->file_offset}, s});
        (s->mode == SiteMode::jmp ? reg.sites_jmp_ : reg.sites_int3_)
            .fetch_add(1, std::memory_order_relaxed);
      }
      reg.sites_.set_many(keyed);
    }
    register_consumers(made, results);
    return results;
  }

  // Every consumer of a spec that succeeded goes in the engine's map (by handle id).
  void register_consumers(const std::vector<std::pair<std::size_t, Consumer*>>& made,
                          const std::vector<Result<std::vector<Handle>>>& results)
      HP_REQUIRES(Registry::get().mu_) {
    std::vector<std::pair<std::uint64_t, Consumer*>> by_id;
    by_id.reserve(made.size());
    for (const auto& [i, c] : made) {
      if (results[i].ok()) by_id.push_back({c->id, c});
    }
    consumers.set_many(by_id);
  }

  // The module watcher: an internal probe on the dynamic linker's _dl_debug_state, which
  // it calls around every dlopen and dlclose (the hook debuggers use). At each consistent
  // state, probes whose file was mapped are applied and probes whose file was unmapped
  // go back to pending. It runs in the thread that called dlopen, before dlopen returns,
  // so the library's functions are probed before the caller can reach them.
  // Internal probes (the module watcher, the unwinder hooks) live while some Engine
  // does: the last Engine's destructor removes them, so a process whose last session
  // ended (hotprobe attach) has the file's bytes everywhere again. Lock order: internal
  // mutex, then the registry's.
  struct Internal {
    hp::Mutex mu;
    int engines HP_GUARDED_BY(mu) = 0;
    EngineImpl* impl HP_GUARDED_BY(mu) = nullptr;  // never freed: trampolines outlive it
    std::vector<Handle> watcher HP_GUARDED_BY(mu);
    std::vector<Handle> unwinder HP_GUARDED_BY(mu);
    bool watcher_on HP_GUARDED_BY(mu) = false;
    bool unwinder_on HP_GUARDED_BY(mu) = false;
  };
  static Internal& internal() {
    static Internal* in = new Internal;  // leaked: threads may use it after static dtors
    return *in;
  }
  static EngineImpl* internal_impl(Internal& in) HP_REQUIRES(in.mu) {
    if (!in.impl) {
      in.impl = new EngineImpl;
      in.impl->options.scheme = Scheme::tasks_trace;
    }
    return in.impl;
  }
  static std::vector<Handle> attach_internal(Internal& in, std::vector<ProbeSpec>& specs,
                                             const char* what) HP_REQUIRES(in.mu) {
    auto results = internal_impl(in)->attach(specs, BatchMode::best_effort);
    std::vector<Handle> handles;
    for (std::size_t i = 0; i < specs.size(); i++) {
      if (results[i].ok()) handles.insert(handles.end(), results[i]->begin(), results[i]->end());
      if (std::getenv("HOTPROBE_DEBUG")) {
        std::fprintf(stderr, "hotprobe: %s %s: %s\n", what, specs[i].target.c_str(),
                     results[i].ok() ? "attached" : results[i].error().message().c_str());
      }
    }
    return handles;
  }

  // An Engine was created: counted, and the module watcher is in place.
  static void engine_created() {
    Internal& in = internal();
    MutexLock lock(in.mu);
    in.engines++;
    if (!in.watcher_on) install_module_watcher(in);
  }

  // An Engine was destroyed (its consumers detached): the last one takes the internal
  // probes off, in one batch. The unwinder hooks stay while a return instance of a
  // detached site is still live on some thread's stack (a thread blocked inside a probed
  // function): an exception thrown through that frame needs them.
  static void engine_destroyed() {
    Internal& in = internal();
    MutexLock lock(in.mu);
    if (--in.engines > 0) return;
    std::vector<Handle> off = in.watcher;
    bool returns_live = false;
    {
      Registry& reg = Registry::get();
      MutexLock rl(reg.mu_);
      const std::vector<const Site*> referenced = sites_referenced_by_return_stacks();
      for (const Retired& r : reg.retired_)
        returns_live |= std::binary_search(referenced.begin(), referenced.end(), r.site);
    }
    if (!returns_live) off.insert(off.end(), in.unwinder.begin(), in.unwinder.end());
    if (!off.empty()) (void)internal_impl(in)->detach(off, true);
    in.watcher.clear();
    in.watcher_on = false;
    if (!returns_live) {
      in.unwinder.clear();
      in.unwinder_on = false;
    }
  }

  // The module watcher: an internal probe on the dynamic linker's _dl_debug_state, which
  // it calls around every dlopen and dlclose (the hook debuggers use). At each consistent
  // state, probes whose file was mapped are applied and probes whose file was unmapped
  // go back to pending. It runs in the thread that called dlopen, before dlopen returns,
  // so the library's functions are probed before the caller can reach them.
  static void install_module_watcher(Internal& in) HP_REQUIRES(in.mu) {
    in.watcher_on = true;
    auto mods = elf::ModuleList::of_self();
    if (!mods.ok()) return;
    std::vector<ProbeSpec> specs;
    for (const elf::Module& m : mods->modules()) {
      auto elf = mods->elf(m);
      if (!elf.ok() || (*elf)->find("_dl_debug_state").empty()) continue;
      ProbeSpec ps;
      ps.target = m.path + ":_dl_debug_state";
      ps.on_entry = [](hotprobe::Hit&) { module_event(); };
      specs.push_back(std::move(ps));
    }
    in.watcher = attach_internal(in, specs, "module watcher");
  }

  static void module_event() {
    if (_r_debug.r_state != r_debug::RT_CONSISTENT) return;
    arch::forget_vector_register_walks();  // an unloaded handler's address may hold new code
    auto mods = elf::ModuleList::of_self();
    if (!mods.ok()) return;
    Registry& reg = Registry::get();
    MutexLock lock(reg.mu_);
    auto loaded = [&](std::uint64_t dev, std::uint64_t ino) {
      return mods->find(elf::ModuleKey{static_cast<dev_t>(dev), static_cast<ino_t>(ino)});
    };
    bool int3_changed = false;
    // Unmapped: the code is gone, so nothing is restored; the site retires as usual and
    // its consumers wait for the file to be mapped again.
    std::vector<Site*> gone;
    reg.sites_.for_each([&](const SiteKey&, Site* site) {
      if (!loaded(site->dev, site->ino)) gone.push_back(site);
    });
    for (Site* site : gone) {
      reg.sites_.erase({site->dev, site->ino, site->file_offset});
      for (Consumer* c : site->members) {
        c->site = nullptr;
        reg.pending_.push_back(c);
      }
      site->members.clear();
      publish(site, {});
      (site->mode == SiteMode::jmp ? reg.sites_jmp_ : reg.sites_int3_)
          .fetch_sub(1, std::memory_order_relaxed);
      int3_changed |= site->mode == SiteMode::int3;
      reg.retired_.push_back({site, ++reg.retire_epoch_});
    }
    // Mapped: pending consumers get their sites.
    std::vector<Consumer*> still;
    std::vector<Site*> fresh;
    std::unordered_map<SiteKey, Site*, SiteKeyHash> fresh_by_key;
    std::unordered_set<Site*> touched;
    std::vector<Consumer*> placed;
    for (Consumer* c : reg.pending_) {
      const elf::Module* m = loaded(c->dev, c->ino);
      if (!m) {
        still.push_back(c);
        continue;
      }
      SiteKey key{c->dev, c->ino, c->file_offset};
      Site* site = nullptr;
      site = reg.sites_.get(key);
      if (auto f = fresh_by_key.find(key); !site && f != fresh_by_key.end()) site = f->second;
      auto* owner = static_cast<EngineImpl*>(const_cast<void*>(c->engine));
      if (!site) {
        auto fa = m->offset_to_address(c->function_file_offset);
        Target t;
        t.key = key;
        t.function = fa.ok() ? *fa : 0;
        t.function_file_offset = c->function_file_offset;
        t.function_size = c->function_size;
        t.offset = c->offset;
        t.has_symbol = c->has_symbol;
        t.fragment = c->fragment;
        t.describe = c->describe;
        ProbeSpec ps;
        ps.vector_registers = c->vector_registers;
        ps.allow_int3 = c->allow_int3;
        ps.force_int3 = c->force_int3;
        auto built = fa.ok() ? owner->build_site(t, ps, reg) : Result<Site*>(fa.error());
        if (!built.ok()) {
          std::fprintf(stderr, "hotprobe: %s stays pending: %s\n", c->describe.c_str(),
                       built.error().message().c_str());
          still.push_back(c);
          continue;
        }
        site = *built;
        fresh.push_back(site);
        fresh_by_key[key] = site;
      }
      if (c->on_return && !reg.ensure_return_trampoline(site->scheme).ok()) {
        still.push_back(c);
        continue;
      }
      c->site = site;
      site->members.push_back(c);
      touched.insert(site);
      placed.push_back(c);
    }
    reg.pending_ = std::move(still);
    for (Site* s : touched)
      publish(s, {});
    if (!fresh.empty()) {
      std::vector<PatchSite> patches;
      for (Site* s : fresh) {
        patches.push_back(patch_for(s, true));
        reg.sites_.set({s->dev, s->ino, s->file_offset}, s);
        int3_changed |= s->mode == SiteMode::int3;
      }
      if (int3_changed) reg.publish_int3_table();
      int3_changed = false;
      auto applied = apply_patches(patches);
      if (!applied.ok()) {
        std::fprintf(stderr, "hotprobe: probes on a loaded library stay pending: %s\n",
                     applied.error().message().c_str());
        for (Site* s : fresh) {
          reg.sites_.erase({s->dev, s->ino, s->file_offset});
          for (Consumer* c : s->members) {
            c->site = nullptr;
            reg.pending_.push_back(c);
          }
          s->members.clear();
          publish(s, {});
        }
        reg.publish_int3_table();
        std::vector<Site*> dead = fresh;
        sync::tasks_trace().call([dead] { free_sites(dead, Registry::get()); });
        return;
      }
      for (Site* s : fresh) {
        (s->mode == SiteMode::jmp ? reg.sites_jmp_ : reg.sites_int3_)
            .fetch_add(1, std::memory_order_relaxed);
      }
    }
    if (int3_changed) reg.publish_int3_table();
  }

  // Internal probes that keep unwinders working through hijacked return addresses (see
  // dispatch.h): installed once, before the first return probe, in every loaded module
  // that defines the unwinder's entry points (libgcc_s, or a static copy in the program).
  static void ensure_unwinder_probes() {
    Internal& in = internal();
    MutexLock lock(in.mu);
    if (in.unwinder_on) return;
    in.unwinder_on = true;
    auto mods = elf::ModuleList::of_self();
    if (!mods.ok()) return;
    static const char* const kUnhijack[] = {"_Unwind_RaiseException", "_Unwind_Resume",
                                            "_Unwind_Resume_or_Rethrow", "_Unwind_ForcedUnwind",
                                            "_Unwind_Backtrace"};
    std::vector<ProbeSpec> specs;
    for (const elf::Module& m : mods->modules()) {
      auto elf = mods->elf(m);
      if (!elf.ok()) continue;
      auto add = [&](const char* name, hotprobe::Handler h) {
        if ((*elf)->find(name).empty()) return;
        ProbeSpec ps;
        ps.target = m.path + ":" + name;
        ps.on_entry = h;
        ps.vector_registers = true;
        specs.push_back(std::move(ps));
      };
      for (const char* n : kUnhijack)
        add(n, [](hotprobe::Hit&) { unhijack_all(); });
      add("__cxa_begin_catch", [](hotprobe::Hit& h) { rehijack_live(h.regs->rsp); });
    }
    in.unwinder = attach_internal(in, specs, "internal probe");
  }

  static std::vector<Result<std::vector<Handle>>> fail_all(
      std::vector<Result<std::vector<Handle>>>& results, std::span<const ProbeSpec> specs) {
    std::vector<Result<std::vector<Handle>>> out;
    std::string first;
    for (std::size_t i = 0; i < results.size(); i++) {
      if (!results[i].ok() && first.empty())
        first = specs[i].target + ": " + results[i].error().message();
    }
    for (std::size_t i = 0; i < results.size(); i++) {
      if (!results[i].ok()) {
        out.push_back(results[i].error());
      } else {
        out.push_back(Error(
            Errc::invalid_argument,
            "not attached: the batch is all-or-nothing and another probe failed (" + first + ")"));
      }
    }
    return out;
  }

  Result<void> detach(std::span<const Handle> handles, bool wait) {
    Registry& reg = Registry::get();
    std::vector<Scheme> schemes_to_sync;
    {
      MutexLock lock(reg.mu_);
      Registry::get().mu_.assert_held();  // the analysis names the lock Registry::get().mu_
      // The consumers to free, by scheme (one garbage batch and one grace period each),
      // and the sites that lose them (a site once, though it may lose several).
      std::vector<std::pair<Scheme, Garbage>> garbage;
      auto garbage_of = [&](Scheme s) -> Garbage& {
        for (auto& [scheme, g] : garbage) {
          if (scheme == s) return g;
        }
        garbage.push_back({s, Garbage{}});
        schemes_to_sync.push_back(s);
        return garbage.back().second;
      };
      std::vector<Site*> changed;
      changed.reserve(handles.size());
      for (Handle h : handles) {
        if (!consumers.get(h.id)) {
          return Error(Errc::invalid_argument,
                       "handle " + std::to_string(h.id) +
                           " is not attached by this engine (detached twice?)");
        }
      }
      for (Handle h : handles) {
        Consumer* c = consumers.get(h.id);
        if (!c) continue;  // a duplicate in the span
        consumers.erase(h.id);
        if (!c->site) {  // pending: no reader can reach it
          reg.pending_.erase(std::remove(reg.pending_.begin(), reg.pending_.end(), c),
                             reg.pending_.end());
          delete c;
          continue;
        }
        auto& mem = c->site->members;
        mem.erase(std::remove(mem.begin(), mem.end(), c), mem.end());
        garbage_of(c->site->scheme).consumers.push_back(c);
        changed.push_back(c->site);
      }
      std::sort(changed.begin(), changed.end());
      changed.erase(std::unique(changed.begin(), changed.end()), changed.end());
      std::vector<Site*> gone;
      for (Site* s : changed) {
        publish_into(s, garbage_of(s->scheme));
        if (s->members.empty()) gone.push_back(s);
      }
      for (auto& [scheme, g] : garbage)
        retire(scheme, std::move(g));
      if (!gone.empty()) {
        std::vector<PatchSite> patches;
        patches.reserve(gone.size());
        bool any_int3 = false;
        for (Site* s : gone) {
          patches.push_back(patch_for(s, false));
          any_int3 |= s->mode == SiteMode::int3;
        }
        auto applied = apply_patches(patches);
        if (!applied.ok()) {
          // The consumers are gone (their handlers will not run after the grace period),
          // but the code stays patched: report it, keep the sites.
          return Error(applied.error().code(),
                       "consumers detached, but the code could not be restored: " +
                           applied.error().message());
        }
        for (Site* s : gone) {
          reg.sites_.erase({s->dev, s->ino, s->file_offset});
          (s->mode == SiteMode::jmp ? reg.sites_jmp_ : reg.sites_int3_)
              .fetch_sub(1, std::memory_order_relaxed);
          reg.retired_.push_back({s, ++reg.retire_epoch_});
        }
        if (any_int3) reg.publish_int3_table();
      }
    }
    if (wait) {
      std::uint64_t epoch = current_epoch();
      for (Scheme s : schemes_to_sync) {
        synchronize(s);
        grace_periods.fetch_add(1, std::memory_order_relaxed);
      }
      reclaim(schemes_to_sync, epoch);
    }
    return {};
  }

  static std::uint64_t current_epoch() {
    MutexLock lock(Registry::get().mu_);
    return Registry::get().retire_epoch_;
  }

  void sync() {
    std::uint64_t epoch = current_epoch();
    synchronize(options.scheme);
    grace_periods.fetch_add(1, std::memory_order_relaxed);
    reclaim({options.scheme}, epoch);
  }

  // Frees retired sites whose every rule passed: unpatched (they are retired), a grace
  // period of their scheme since, no return instance referencing them, and no thread's
  // ip inside their trampoline or copy. The caller has just waited for a grace period of
  // each of `schemes` that started after retire epoch `epoch`: sites of those schemes
  // retired at or before it have had theirs.
  static void reclaim(const std::vector<Scheme>& schemes, std::uint64_t epoch) {
    Registry& reg = Registry::get();
    MutexLock lock(reg.mu_);
    if (reg.retired_.empty()) return;
    std::vector<Retired> keep, ready;
    // Sites are retired unpatched and a grace period has passed for the ones checked
    // here, so none of them gains a return instance after this scan.
    const std::vector<const Site*> referenced = sites_referenced_by_return_stacks();
    for (Retired& r : reg.retired_) {
      bool gp_ok = r.epoch <= epoch &&
                   std::find(schemes.begin(), schemes.end(), r.site->scheme) != schemes.end();
      if (!gp_ok)
        keep.push_back(r);
      else if (std::binary_search(referenced.begin(), referenced.end(), r.site))
        keep.push_back(r);
      else
        ready.push_back(r);
    }
    if (!ready.empty()) {
      // A thread whose pc is in the dispatcher's section may be about to return into any
      // trampoline (it left the read section but not yet the call): not outside.
      std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ranges{
          {reinterpret_cast<std::uintptr_t>(__start_hp_dispatch),
           reinterpret_cast<std::uintptr_t>(__stop_hp_dispatch)}};
      // A thread returning from the SIGTRAP handler to an int3 copy passes through the
      // signal restorer (libc's __restore_rt and the rt_sigreturn system call) after the
      // hook has left the section: not outside either.
      struct sigaction cur {};
      if (sigaction(SIGTRAP, nullptr, &cur) == 0 && cur.sa_restorer) {
        auto at = reinterpret_cast<std::uintptr_t>(cur.sa_restorer);
        ranges.push_back({at, at + 16});
      }
      for (Retired& r : ready) {
        ranges.push_back({r.site->trampoline, r.site->trampoline + r.site->trampoline_size});
      }
      // Two samples a little apart: a thread caught in a window no range covers (its first
      // hit's registration inside libc) has moved on, into a sampled range, by the second.
      auto outside = threads_outside(ranges);
      if (outside.ok() && *outside) {
        timespec pause{0, 2'000'000};
        nanosleep(&pause, nullptr);
        outside = threads_outside(ranges);
      }
      if (outside.ok() && *outside) {
        // The int3 table (tasks-trace) may still be read by a late SIGTRAP: free after a
        // tasks-trace grace period too.
        std::vector<Site*> dead;
        for (Retired& r : ready)
          dead.push_back(r.site);
        sync::tasks_trace().call([dead] { free_sites(dead, Registry::get()); });
      } else {
        keep.insert(keep.end(), ready.begin(), ready.end());
      }
    }
    reg.retired_ = std::move(keep);
  }
};

}  // namespace hp::core

// ---------------------------------------------------------------------------------------
namespace hotprobe {

struct Engine::Impl : hp::core::EngineImpl {};

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Engine::~Engine() {
  std::vector<Handle> all;
  {
    hp::MutexLock lock(hp::core::Registry::get().mu_);
    impl_->consumers.for_each(
        [&](std::uint64_t id, hp::core::Consumer*) { all.push_back(Handle{id}); });
  }
  if (!all.empty()) (void)impl_->detach(all, true);
  hp::core::EngineImpl::engine_destroyed();
}

Result<std::unique_ptr<Engine>> Engine::create(EngineOptions options) {
  if (options.return_stack_depth == 0 || options.return_stack_depth > hp::core::kMaxReturnDepth) {
    return Error(Errc::invalid_argument, "return_stack_depth must be between 1 and " +
                                             std::to_string(hp::core::kMaxReturnDepth));
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  (void)hp::core::Registry::get();
  hp::core::EngineImpl::engine_created();
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

Scheme Engine::scheme() const noexcept {
  return impl_->options.scheme;
}

namespace {

// While a thread runs the engine's attach or detach, the calls the engine itself makes
// (strlen and malloc while resolving, free while retiring) are hotprobe's, not the
// program's: a probe they hit is a miss (Stats::misses_recursion), as a hit inside a
// handler is, so a count on strlen is the program's calls, as bpftrace counts them.
class EngineCallScope {
 public:
  EngineCallScope() : saved_(hp::core::tls_state.in_handler) {
    hp::core::tls_state.in_handler = true;
  }
  ~EngineCallScope() { hp::core::tls_state.in_handler = saved_; }
  EngineCallScope(const EngineCallScope&) = delete;
  EngineCallScope& operator=(const EngineCallScope&) = delete;

 private:
  bool saved_;
};

}  // namespace

Result<std::vector<Handle>> Engine::attach(const ProbeSpec& spec) {
  EngineCallScope scope;
  auto r = impl_->attach(std::span<const ProbeSpec>(&spec, 1), BatchMode::best_effort);
  return std::move(r[0]);
}

std::vector<Result<std::vector<Handle>>> Engine::attach(std::span<const ProbeSpec> specs,
                                                        BatchMode mode) {
  EngineCallScope scope;
  return impl_->attach(specs, mode);
}

Result<void> Engine::detach(std::span<const Handle> handles) {
  EngineCallScope scope;
  return impl_->detach(handles, true);
}
Result<void> Engine::detach_nosync(std::span<const Handle> handles) {
  EngineCallScope scope;
  return impl_->detach(handles, false);
}
void Engine::sync() {
  impl_->sync();
}

int reserved_signal() noexcept {
  return hp::core::move_signal_number();
}

Stats Engine::stats() const {
  Stats s;
  auto t = hp::core::hit_totals();
  s.hits = t.hits;
  s.misses_recursion = t.misses_recursion;
  s.misses_return_stack = t.misses_return_stack;
  s.skipped_own = t.skipped_own;
  auto& reg = hp::core::Registry::get();
  s.sites_jmp = reg.sites_jmp_.load(std::memory_order_relaxed);
  s.sites_int3 = reg.sites_int3_.load(std::memory_order_relaxed);
  s.sync_core_rounds = hp::core::patch_totals().sync_core_rounds;
  s.grace_periods = impl_->grace_periods.load(std::memory_order_relaxed);
  hp::MutexLock lock(reg.mu_);
  hp::core::Registry::get().mu_.assert_held();  // the analysis names it Registry::get().mu_
  s.consumers = impl_->consumers.size();
  s.zombie_sites = reg.retired_.size();
  return s;
}

}  // namespace hotprobe
