// Real code: every function of the loaded libc (symbols from its .dynsym, sizes from the
// symbol table) goes through the planner and the relocator, and a few relocated libc
// prologues are executed and compared with the originals.
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cctype>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "arch/x86_64/code_memory.h"
#include "arch/x86_64/fuzz.h"
#include "arch/x86_64/plan.h"
#include "arch/x86_64/relocate.h"

namespace hp::arch {
namespace {

struct Function {
  std::string name;
  std::uint64_t address;
  std::uint64_t size;
};

// libc's defined STT_FUNC symbols, relocated to where libc is loaded.
std::vector<Function> libc_functions() {
  Dl_info info{};
  if (!dladdr(reinterpret_cast<void*>(&::getpid), &info) || !info.dli_fname) return {};
  std::ifstream f(info.dli_fname, std::ios::binary);
  std::vector<char> file((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (file.size() < sizeof(Elf64_Ehdr)) return {};
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(file.data());
  const auto* sh = reinterpret_cast<const Elf64_Shdr*>(file.data() + eh->e_shoff);
  const auto base = reinterpret_cast<std::uint64_t>(info.dli_fbase);
  std::vector<Function> out;
  for (unsigned i = 0; i < eh->e_shnum; ++i) {
    if (sh[i].sh_type != SHT_DYNSYM) continue;
    const auto* syms = reinterpret_cast<const Elf64_Sym*>(file.data() + sh[i].sh_offset);
    const char* strtab = file.data() + sh[sh[i].sh_link].sh_offset;
    std::map<std::uint64_t, bool> seen;  // aliases share an address
    for (std::size_t k = 0; k < sh[i].sh_size / sizeof(Elf64_Sym); ++k) {
      const Elf64_Sym& s = syms[k];
      if (ELF64_ST_TYPE(s.st_info) != STT_FUNC || s.st_shndx == SHN_UNDEF || s.st_size == 0)
        continue;
      if (seen[s.st_value]) continue;
      seen[s.st_value] = true;
      out.push_back({strtab + s.st_name, base + s.st_value, s.st_size});
    }
  }
  return out;
}

std::span<const std::uint8_t> bytes(const Function& fn) {
  return {reinterpret_cast<const std::uint8_t*>(fn.address), fn.size};
}

TEST(ArchLibc, EveryFunctionPlansOrRefusesWithAReason) {
  const std::vector<Function> fns = libc_functions();
  if (fns.size() < 500) GTEST_SKIP() << "could not read libc's symbols";
  CodeMemory mem(1024, 64 * 1024);
  auto slot = mem.allocate(fns.front().address);
  ASSERT_TRUE(slot.ok());
  std::size_t planned = 0, boundaries = 0, boundary_plans = 0;
  std::map<std::string, int> reasons;
  for (const Function& fn : fns) {
    auto plan = plan_displacement(bytes(fn), fn.address, 0);
    if (!plan.ok()) {
      ASSERT_TRUE(plan.error().code() == Errc::not_relocatable)
          << fn.name << ": " << plan.error().message();
      const std::string& m = plan.error().message();
      reasons[m.substr(0, m.find(':'))]++;
      continue;
    }
    ++planned;
    auto moved = relocate_with_jmp_back(plan->original, plan->patch_address, slot->address);
    ASSERT_TRUE(moved.ok()) << fn.name << ": " << moved.error().message();
    check_decodes(moved->code, slot->address);
    // A few boundaries inside the function too.
    std::uint64_t off = 0;
    for (int i = 0; i < 8 && off < fn.size; ++i) {
      auto insn = decode(bytes(fn).subspan(off), fn.address + off);
      if (!insn.ok()) break;
      auto p = plan_displacement(bytes(fn), fn.address, off);
      ++boundaries;
      if (p.ok()) {
        ++boundary_plans;
        auto r = relocate_with_jmp_back(p->original, p->patch_address, slot->address);
        if (r.ok()) check_decodes(r->code, slot->address);
      }
      off += insn->length;
    }
  }
  std::string summary;
  for (const auto& [reason, n] : reasons)
    summary += "  " + std::to_string(n) + " x " + reason + "\n";
  RecordProperty("functions", static_cast<int>(fns.size()));
  RecordProperty("planned_at_entry", static_cast<int>(planned));
  std::printf(
      "libc: %zu functions, %zu plannable at entry (jmp mode); %zu of %zu early "
      "boundaries plannable\nrefusals at entry:\n%s",
      fns.size(), planned, boundary_plans, boundaries, summary.c_str());
  EXPECT_GT(planned * 100, fns.size() * 80) << "most libc functions take a 5-byte jump at entry";
}

using Fn1 = long (*)(long);

// The displaced bytes for a probe at fn_ptr: from plan_displacement when the symbol (and
// so its size) is known; IFUNC implementations such as __strlen_avx2 are local symbols
// that a stripped libc does not list, so for them whole instructions are taken up to 5
// bytes without the whole-function scan (fine for running a copy, not for patching).
std::vector<std::uint8_t> displaced(void* fn_ptr, const char* name) {
  const auto at = reinterpret_cast<std::uint64_t>(fn_ptr);
  Dl_info info{};
  void* extra = nullptr;
  if (dladdr1(fn_ptr, &info, &extra, RTLD_DL_SYMENT) && extra && info.dli_saddr == fn_ptr) {
    const auto* sym = static_cast<const Elf64_Sym*>(extra);
    const std::span<const std::uint8_t> fn(static_cast<const std::uint8_t*>(fn_ptr), sym->st_size);
    auto plan = plan_displacement(fn, at, 0);
    if (!plan.ok()) {
      ADD_FAILURE() << name << ": " << plan.error().message();
      return {};
    }
    return std::vector<std::uint8_t>(plan->original.begin(), plan->original.end());
  }
  const std::span<const std::uint8_t> window(static_cast<const std::uint8_t*>(fn_ptr), 64);
  std::size_t len = 0;
  while (len < 5) {
    auto insn = decode(window.subspan(len), at + len);
    if (!insn.ok() || insn->ends_flow() || insn->kind == InsnKind::call_rel) return {};
    len += insn->length;
  }
  return {window.begin(), window.begin() + static_cast<std::ptrdiff_t>(len)};
}

template <class F>
F relocated_prologue(CodeMemory& mem, void* fn_ptr, const char* name) {
  if (!fn_ptr) {
    ADD_FAILURE() << name << ": not found";
    return nullptr;
  }
  const auto at = reinterpret_cast<std::uint64_t>(fn_ptr);
  std::vector<std::uint8_t> original = displaced(fn_ptr, name);
  if (original.empty()) return nullptr;
  auto slot = mem.allocate(at);
  if (!slot.ok()) return nullptr;
  auto r = relocate_with_jmp_back(original, at, slot->address);
  if (!r.ok() || !mem.write(slot.value(), r->code).ok()) {
    ADD_FAILURE() << name << ": relocation failed";
    return nullptr;
  }
  return reinterpret_cast<F>(slot->address);
}

void* libc_symbol(const char* name) {
  void* libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
  return libc ? dlsym(libc, name) : nullptr;  // IFUNCs come back resolved
}

TEST(ArchLibc, RelocatedProloguesOfLibcFunctionsRun) {
  CodeMemory mem;
  if (auto f =
          relocated_prologue<std::size_t (*)(const char*)>(mem, libc_symbol("strlen"), "strlen")) {
    for (const char* s :
         {"", "a", "hello, world", "0123456789abcdefghijklmnopqrstuvwxyz0123456789"}) {
      EXPECT_EQ(f(s), std::strlen(s)) << s;
    }
  }
  if (auto f = relocated_prologue<const void* (*)(const void*, int, std::size_t)>(
          mem, libc_symbol("memchr"), "memchr")) {
    const char buf[] = "abcdefghijklmnopqrstuvwxyz";
    EXPECT_EQ(f(buf, 'q', sizeof buf), buf + 16);
    EXPECT_EQ(f(buf, '!', sizeof buf), nullptr);
  }
  if (auto f = relocated_prologue<int (*)(const char*, const char*)>(mem, libc_symbol("strcmp"),
                                                                     "strcmp")) {
    EXPECT_EQ(f("abc", "abc"), 0);
    EXPECT_LT(f("abc", "abd"), 0);
    EXPECT_GT(f("b", "abc"), 0);
  }
  if (auto f = relocated_prologue<int (*)(int)>(mem, libc_symbol("toupper"), "toupper")) {
    for (int c : {97, 122, 65, 48, 32, 200})
      EXPECT_EQ(f(c), std::toupper(c)) << c;
  }
  if (auto f = relocated_prologue<pid_t (*)()>(mem, libc_symbol("getpid"), "getpid")) {
    EXPECT_EQ(f(), getpid());
  }
  if (auto f = relocated_prologue<Fn1>(mem, libc_symbol("labs"), "labs")) {
    EXPECT_EQ(f(-5), 5);
    EXPECT_EQ(f(7), 7);
  }
}

}  // namespace
}  // namespace hp::arch
