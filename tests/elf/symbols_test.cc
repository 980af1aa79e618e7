#include <dlfcn.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <thread>

#include "elf/elf_file.h"
#include "elf/modules.h"
#include "elf_test_util.h"

extern "C" __attribute__((noinline, used)) int hp_symbols_test_target(int x) {
  asm volatile("" ::: "memory");
  return x * 5 + 3;
}

namespace hp::elf {
namespace {

using testing::bulk_lib;
using testing::fixture_lib;

std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

std::shared_ptr<const ElfFile> fixture_elf() {
  auto r = load_elf(fixture_lib());
  EXPECT_TRUE(r.ok()) << r.error().message();
  return r.ok() ? *r : nullptr;
}

// Keeps the fixture loaded for one test.
struct Loaded {
  void* handle = ::dlopen(fixture_lib().c_str(), RTLD_NOW | RTLD_LOCAL);
  ~Loaded() {
    if (handle) ::dlclose(handle);
  }
};

const Symbol* only(const ElfFile& f, std::string_view name) {
  auto v = f.find(name);
  EXPECT_EQ(v.size(), 1u) << name;
  return v.size() == 1 ? v[0] : nullptr;
}

TEST(Symbols, FixtureNamesAndSizes) {
  auto f = fixture_elf();
  ASSERT_TRUE(f);
  EXPECT_TRUE(f->has_symtab());
  EXPECT_TRUE(f->position_independent());
  EXPECT_EQ(f->soname(), "libhp_elf_fixture.so");
  struct {
    const char* name;
    std::uint64_t size;
    bool global;
  } expected[] = {
      {"hp_fx_add", 16, true},        {"handle_alpha", 6, true},
      {"handle_beta", 6, true},       {"handle_gamma", 6, true},
      {"handlex_delta", 1, true},     {"my_handle_epsilon", 1, true},
      {"hp_fx_pick_impl_a", 6, true}, {"hp_fx_pick_impl_b", 6, true},
      {"hp_fx_pick", 8, true},        {"hp_fx_split", 7, true},
  };
  for (const auto& e : expected) {
    const Symbol* s = only(*f, e.name);
    ASSERT_NE(s, nullptr) << e.name;
    EXPECT_EQ(s->size, e.size) << e.name;
    EXPECT_EQ(s->global, e.global) << e.name;
    EXPECT_TRUE(s->dynamic) << e.name;  // exported, and merged with its .symtab twin
    EXPECT_EQ(s->is_ifunc(), std::string_view(e.name) == "hp_fx_pick") << e.name;
    EXPECT_TRUE(f->offset_is_code(s->file_offset)) << e.name;
    EXPECT_EQ(f->vaddr_to_offset(s->value).value(), s->file_offset);
    EXPECT_EQ(f->offset_to_vaddr(s->file_offset).value(), s->value);
  }
  // Two local functions named hp_fx_local, from two object files, 32 and 8 bytes.
  auto locals = f->find("hp_fx_local");
  ASSERT_EQ(locals.size(), 2u);
  std::multiset<std::uint64_t> sizes;
  for (const Symbol* s : locals) {
    sizes.insert(s->size);
    EXPECT_FALSE(s->global);
    EXPECT_FALSE(s->dynamic);
  }
  EXPECT_EQ(sizes, (std::multiset<std::uint64_t>{8, 32}));
  // Sorted by offset; no duplicate (name, offset) after merging .symtab and .dynsym.
  auto syms = f->symbols();
  for (size_t i = 1; i < syms.size(); ++i) {
    EXPECT_LE(syms[i - 1].file_offset, syms[i].file_offset);
    EXPECT_FALSE(syms[i - 1].file_offset == syms[i].file_offset &&
                 syms[i - 1].name == syms[i].name);
  }
}

TEST(Symbols, GlobReturnsExactlyTheMatches) {
  auto f = fixture_elf();
  ASSERT_TRUE(f);
  auto names_of = [&](std::string_view spec) {
    std::set<std::string> out;
    auto r = f->lookup(spec);
    EXPECT_TRUE(r.ok()) << spec << ": " << (r.ok() ? "" : r.error().message());
    if (r.ok()) {
      for (const Target& t : *r) {
        EXPECT_NE(t.symbol, nullptr);
        EXPECT_EQ(t.file_offset, t.symbol->file_offset);
        EXPECT_EQ(t.offset_in_symbol, 0u);
        out.insert(std::string(t.symbol->name));
      }
    }
    return out;
  };
  EXPECT_EQ(names_of("handle_*"),
            (std::set<std::string>{"handle_alpha", "handle_beta", "handle_gamma"}));
  EXPECT_EQ(names_of("*handle*"),
            (std::set<std::string>{"handle_alpha", "handle_beta", "handle_gamma", "handlex_delta",
                                   "my_handle_epsilon"}));
  EXPECT_EQ(names_of("handle_?eta"), (std::set<std::string>{"handle_beta"}));
  EXPECT_EQ(names_of("handle_[ag]*"), (std::set<std::string>{"handle_alpha", "handle_gamma"}));
  EXPECT_EQ(names_of("hp_fx_pick*"),
            (std::set<std::string>{"hp_fx_pick", "hp_fx_pick_impl_a", "hp_fx_pick_impl_b"}));
  // Aliases are one site: one target, under the preferred (shorter) name.
  auto add = f->lookup("hp_fx_add*");
  ASSERT_TRUE(add.ok());
  ASSERT_EQ(add->size(), 1u);
  EXPECT_EQ(add->front().symbol->name, "hp_fx_add");
  auto alias = f->lookup_one("hp_fx_add_alias");
  ASSERT_TRUE(alias.ok()) << alias.error().message();
  EXPECT_EQ(alias->file_offset, add->front().file_offset);
  EXPECT_EQ(f->containing_offset(alias->file_offset + 3)->name, "hp_fx_add");
  // Both local hp_fx_local functions: two targets at two offsets.
  auto locals = f->lookup("hp_fx_loc*");
  ASSERT_TRUE(locals.ok());
  EXPECT_EQ(locals->size(), 2u);

  auto none = f->lookup("nothing_*");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code(), Errc::not_found);
  EXPECT_NE(none.error().message().find("matches 'nothing_*'"), std::string::npos);
  auto with_offset = f->lookup("handle_*+4");
  ASSERT_FALSE(with_offset.ok());
  EXPECT_EQ(with_offset.error().code(), Errc::invalid_argument);
  EXPECT_NE(with_offset.error().message().find("glob cannot take +OFFSET"), std::string::npos);
  auto one = f->lookup_one("handle_*");
  ASSERT_FALSE(one.ok());
  EXPECT_NE(one.error().message().find("one function is needed"), std::string::npos);
}

// The appending lookup (a batch's one list): what the list held stays, a glob's aliases
// are merged only among its own targets, and a failure adds nothing.
TEST(Symbols, AppendingLookupKeepsTheListAndAddsNothingOnFailure) {
  auto f = fixture_elf();
  ASSERT_TRUE(f);
  std::vector<Target> out;
  ASSERT_TRUE(f->lookup("hp_fx_add", out).ok());
  ASSERT_EQ(out.size(), 1u);
  // The glob's one target is at the offset the list ends with: still appended.
  ASSERT_TRUE(f->lookup("hp_fx_add*", out).ok());
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[1].file_offset, out[0].file_offset);
  EXPECT_EQ(out[1].symbol->name, "hp_fx_add");
  ASSERT_TRUE(f->lookup("hp_fx_loc*", out).ok());
  ASSERT_EQ(out.size(), 4u);
  EXPECT_EQ(out[0].symbol->name, "hp_fx_add");
  for (std::string_view bad :
       {"nothing_*", "no_such_function_here", "handle_*+4", "handle_alpha+x", "0xzz", ""}) {
    EXPECT_FALSE(f->lookup(bad, out).ok()) << bad;
    EXPECT_EQ(out.size(), 4u) << bad;
  }
  auto whole = f->lookup("handle_alpha+1");
  ASSERT_TRUE(whole.ok()) << whole.error().message();
  ASSERT_TRUE(f->lookup("handle_alpha+1", out).ok());
  ASSERT_EQ(out.size(), 5u);
  EXPECT_EQ(out[4].file_offset, whole->front().file_offset);
  EXPECT_EQ(out[4].offset_in_symbol, 1u);
}

TEST(Symbols, UnknownNameSuggestsCloseMatches) {
  auto f = fixture_elf();
  ASSERT_TRUE(f);
  auto near = f->suggestions("handle_alpah");
  ASSERT_FALSE(near.empty());
  EXPECT_EQ(near.front(), "handle_alpha");
  EXPECT_LE(near.size(), 3u);
  auto r = f->lookup("hp_fx_ad");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), Errc::not_found);
  const std::string& msg = r.error().message();
  EXPECT_NE(msg.find("no function 'hp_fx_ad'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("did you mean 'hp_fx_add'"), std::string::npos) << msg;
  // Many close names: at most three, nearest first.
  // Uncached, so CacheLoadsEachFileOnce still sees the first load of this file.
  auto bulk = load_elf_uncached(::open(bulk_lib().c_str(), O_RDONLY | O_CLOEXEC), bulk_lib());
  ASSERT_TRUE(bulk.ok()) << bulk.error().message();
  auto many = (*bulk)->suggestions("hp_bulk_10000");
  ASSERT_EQ(many.size(), 3u);
  EXPECT_EQ(many.front(), "hp_bulk_1000");
  auto far = f->lookup("completely_unrelated_function_name");
  ASSERT_FALSE(far.ok());
  EXPECT_EQ(far.error().message().find("did you mean"), std::string::npos) << far.error().message();
}

TEST(Symbols, EditDistance) {
  EXPECT_EQ(edit_distance("", ""), 0u);
  EXPECT_EQ(edit_distance("abc", ""), 3u);
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3u);
  EXPECT_EQ(edit_distance("strlen", "strnlen"), 1u);
  EXPECT_EQ(edit_distance("malloc", "calloc"), 1u);
}

TEST(Symbols, SymbolPlusOffset) {
  auto f = fixture_elf();
  ASSERT_TRUE(f);
  const Symbol* add = only(*f, "hp_fx_add");
  ASSERT_NE(add, nullptr);
  for (auto [spec, off] : {std::pair<const char*, std::uint64_t>{"hp_fx_add+4", 4},
                           {"hp_fx_add+0x4", 4},
                           {"hp_fx_add+15", 15},
                           {"hp_fx_add+0", 0},
                           {"hp_fx_add", 0}}) {
    auto t = f->lookup_one(spec);
    ASSERT_TRUE(t.ok()) << spec << ": " << t.error().message();
    EXPECT_EQ(t->symbol, add);
    EXPECT_EQ(t->offset_in_symbol, off) << spec;
    EXPECT_EQ(t->file_offset, add->file_offset + off) << spec;
    EXPECT_EQ(t->vaddr, add->value + off) << spec;
  }
  auto beyond = f->lookup_one("hp_fx_add+16");
  ASSERT_FALSE(beyond.ok());
  EXPECT_EQ(beyond.error().code(), Errc::invalid_argument);
  EXPECT_NE(beyond.error().message().find("beyond the end of 'hp_fx_add' (16 bytes"),
            std::string::npos)
      << beyond.error().message();

  struct {
    const char* spec;
    const char* says;
  } bad[] = {
      {"hp_fx_add+zz", "bad offset 'zz'"},
      {"hp_fx_add+", "bad offset ''"},
      {"hp_fx_add+0x", "bad offset '0x'"},
      {"hp_fx_add+99999999999999999999999", "bad offset"},
      {"+5", "no function name"},
      {"hp_fx_pick+4", "is an IFUNC"},
      {"", "empty function spec"},
      {"0xzz", "not a hexadecimal address"},
      {"0x0", "is not code"},
      {"0xffffffffffff", "is not code"},
      {"fileoff:0xzz", "not a hexadecimal file offset"},
      {"fileoff:12", "not a hexadecimal file offset"},
      {"fileoff:0x0", "is not code"},
      {"hp_fx_local", "names 2 functions"},
  };
  for (const auto& b : bad) {
    auto r = f->lookup(b.spec);
    ASSERT_FALSE(r.ok()) << b.spec;
    EXPECT_EQ(r.error().code(), Errc::invalid_argument) << b.spec;
    EXPECT_NE(r.error().message().find(b.says), std::string::npos)
        << b.spec << ": " << r.error().message();
  }
  auto missing = f->lookup("no_such_fn+4");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code(), Errc::not_found);
  // An IFUNC's own entry is allowed: the caller decides whether to resolve it.
  auto pick = f->lookup_one("hp_fx_pick+0");
  ASSERT_TRUE(pick.ok()) << pick.error().message();
  EXPECT_TRUE(pick->symbol->is_ifunc());
}

// 0xADDR is a virtual address as nm prints it (what bpftrace reads), fileoff:0xOFF a file
// offset; the two differ wherever a segment's address is not its offset (lld's PIEs).
TEST(Symbols, AddressAndFileOffsetSpecs) {
  auto f = fixture_elf();
  ASSERT_TRUE(f);
  const Symbol* beta = only(*f, "handle_beta");
  ASSERT_NE(beta, nullptr);
  for (const std::string& spec : {hex(beta->value + 1), "fileoff:" + hex(beta->file_offset + 1)}) {
    auto t = f->lookup_one(spec);
    ASSERT_TRUE(t.ok()) << spec << ": " << t.error().message();
    EXPECT_EQ(t->symbol, beta) << spec;
    EXPECT_EQ(t->offset_in_symbol, 1u) << spec;
    EXPECT_EQ(t->file_offset, beta->file_offset + 1) << spec;
    EXPECT_EQ(t->vaddr, beta->value + 1) << spec;
  }
  // The ambiguous local names are reachable by address.
  for (const Symbol* s : f->find("hp_fx_local")) {
    auto l = f->lookup_one(hex(s->value));
    ASSERT_TRUE(l.ok()) << l.error().message();
    EXPECT_EQ(l->symbol, s);
  }
  auto bad = f->lookup("0x0");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("executable segments span addresses 0x"), std::string::npos)
      << bad.error().message();
  auto bad_off = f->lookup("fileoff:0x0");
  ASSERT_FALSE(bad_off.ok());
  EXPECT_NE(bad_off.error().message().find("executable segments span file offsets 0x"),
            std::string::npos)
      << bad_off.error().message();
}

// An address in the padding between two functions is in no function: nothing to decode
// from, so it is refused, naming the function before it.
TEST(Symbols, AddressOutsideEveryFunctionIsRefused) {
  auto f = fixture_elf();
  ASSERT_TRUE(f);
  const Symbol* alpha = only(*f, "handle_alpha");
  const Symbol* beta = only(*f, "handle_beta");
  ASSERT_NE(alpha, nullptr);
  ASSERT_NE(beta, nullptr);
  ASSERT_LT(alpha->value + alpha->size, beta->value);  // .p2align 4 leaves a gap
  for (const std::string& spec :
       {hex(alpha->value + alpha->size), "fileoff:" + hex(alpha->file_offset + alpha->size)}) {
    auto r = f->lookup(spec);
    ASSERT_FALSE(r.ok()) << spec;
    EXPECT_EQ(r.error().code(), Errc::invalid_argument) << spec;
    EXPECT_NE(r.error().message().find("in no function"), std::string::npos) << r.error().message();
    EXPECT_NE(r.error().message().find("handle_alpha"), std::string::npos) << r.error().message();
  }
}

// A function without a recorded size covers what follows it: an address there is
// OFFSET into it (the engine decodes from its start), as NAME+OFFSET would be.
TEST(Symbols, AddressAfterAnUnsizedFunction) {
  auto f = fixture_elf();
  ASSERT_TRUE(f);
  const Symbol* unsized = only(*f, "hp_fx_unsized");
  ASSERT_NE(unsized, nullptr);
  EXPECT_EQ(unsized->size, 0u);
  auto t = f->lookup_one(hex(unsized->value + 5));
  ASSERT_TRUE(t.ok()) << t.error().message();
  EXPECT_EQ(t->symbol, unsized);
  EXPECT_EQ(t->offset_in_symbol, 5u);
}

// GCC's .cold fragments are pieces of functions: a glob skips them unless it names them;
// an explicit name finds them (marked); clones (.part.N) are functions.
TEST(Symbols, ColdFragmentsAreNotFunctions) {
  EXPECT_TRUE(is_fragment_name("_Z6middlei.cold"));
  EXPECT_TRUE(is_fragment_name("main.cold"));
  EXPECT_TRUE(is_fragment_name("foo.cold.12"));
  EXPECT_TRUE(is_fragment_name("foo.cold@GLIBC_2.2.5"));
  for (const char* name : {"foo.part.0", "foo.isra.3", "foo.constprop.1", "foo.coldish",
                           "foo.cold.x", "foo.cold.", ".cold", "cold", "foo_cold"}) {
    EXPECT_FALSE(is_fragment_name(name)) << name;
  }
  auto f = fixture_elf();
  ASSERT_TRUE(f);
  const Symbol* cold = only(*f, "hp_fx_split.cold");
  const Symbol* cold1 = only(*f, "hp_fx_split.cold.1");
  const Symbol* part = only(*f, "hp_fx_split.part.0");
  ASSERT_TRUE(cold && cold1 && part);
  EXPECT_TRUE(cold->fragment);
  EXPECT_TRUE(cold1->fragment);
  EXPECT_FALSE(part->fragment);
  EXPECT_FALSE(only(*f, "hp_fx_split")->fragment);
  auto names = [&](const char* glob) {
    std::vector<std::string> out;
    auto r = f->lookup(glob);
    EXPECT_TRUE(r.ok()) << glob << ": " << r.error().message();
    if (r.ok()) {
      for (const Target& t : *r)
        out.emplace_back(t.symbol->name);
    }
    return out;
  };
  EXPECT_EQ(names("hp_fx_split*"), (std::vector<std::string>{"hp_fx_split", "hp_fx_split.part.0"}));
  EXPECT_EQ(names("hp_fx_split.cold*"),
            (std::vector<std::string>{"hp_fx_split.cold", "hp_fx_split.cold.1"}));
  auto one = f->lookup_one("hp_fx_split.cold");
  ASSERT_TRUE(one.ok()) << one.error().message();
  EXPECT_TRUE(one->symbol->fragment);
}

TEST(Symbols, TestExecutableFunctionAtItsAddress) {
  auto mods = ModuleList::of_self();
  ASSERT_TRUE(mods.ok()) << mods.error().message();
  const Module* main = mods->main();
  ASSERT_NE(main, nullptr);
  auto elf = mods->elf(*main);
  ASSERT_TRUE(elf.ok()) << elf.error().message();
  EXPECT_TRUE((*elf)->has_symtab());
  auto t = (*elf)->lookup_one("hp_symbols_test_target");
  ASSERT_TRUE(t.ok()) << t.error().message();
  EXPECT_GT(t->symbol->size, 0u);
  const auto fn = reinterpret_cast<std::uintptr_t>(&hp_symbols_test_target);
  EXPECT_EQ(main->offset_to_address(t->file_offset).value(), fn);
  EXPECT_EQ(t->vaddr + main->load_bias, fn);
  EXPECT_EQ(mods->describe(fn + 1), std::string(main->name()) + "!hp_symbols_test_target+0x1");
  auto loc = mods->locate(fn);
  ASSERT_TRUE(loc.ok()) << loc.error().message();
  EXPECT_EQ(loc->module, main);
  EXPECT_EQ(loc->symbol, t->symbol);
  EXPECT_EQ(loc->offset_in_symbol, 0u);
  // A C++ function by its mangled name.
  auto mangled = (*elf)->lookup("_ZN2hp3elf*");
  ASSERT_TRUE(mangled.ok()) << mangled.error().message();
  EXPECT_GT(mangled->size(), 5u);
  // Not in a module.
  int on_stack = 0;
  EXPECT_EQ(mods->describe(reinterpret_cast<std::uintptr_t>(&on_stack)).rfind("0x", 0), 0u);
  EXPECT_FALSE(mods->locate(reinterpret_cast<std::uintptr_t>(&on_stack)).ok());
}

TEST(Symbols, FixtureFunctionsAtTheirDlsymAddresses) {
  Loaded lib;
  ASSERT_NE(lib.handle, nullptr) << ::dlerror();
  auto mods = ModuleList::of_self();
  ASSERT_TRUE(mods.ok()) << mods.error().message();
  auto m = mods->resolve("libhp_elf_fixture.so");
  ASSERT_TRUE(m.ok()) << m.error().message();
  auto elf = mods->elf(**m);
  ASSERT_TRUE(elf.ok()) << elf.error().message();
  EXPECT_EQ(elf->get(), fixture_elf().get());  // one cached table per file
  for (const char* name : {"hp_fx_add", "handle_alpha", "handle_beta", "handle_gamma",
                           "hp_fx_pick_impl_a", "hp_fx_pick_impl_b", "hp_fx_calls_local"}) {
    auto t = (*elf)->lookup_one(name);
    ASSERT_TRUE(t.ok()) << t.error().message();
    auto addr = (*m)->offset_to_address(t->file_offset);
    ASSERT_TRUE(addr.ok()) << addr.error().message();
    EXPECT_EQ(*addr, reinterpret_cast<std::uintptr_t>(::dlsym(lib.handle, name))) << name;
    EXPECT_EQ((*m)->address_to_offset(*addr).value(), t->file_offset);
    EXPECT_EQ(mods->describe(*addr + 1), "libhp_elf_fixture.so!" + std::string(name) + "+0x1");
  }
  auto bias = mods->compute_load_bias(**m);
  ASSERT_TRUE(bias.ok());
  EXPECT_EQ(*bias, (*m)->load_bias);
}

TEST(Symbols, FixtureIfuncResolvesToTheSelectedImplementation) {
  Loaded lib;
  ASSERT_NE(lib.handle, nullptr) << ::dlerror();
  auto mods = ModuleList::of_self();
  ASSERT_TRUE(mods.ok()) << mods.error().message();
  auto m = mods->resolve("libhp_elf_fixture");
  ASSERT_TRUE(m.ok()) << m.error().message();
  auto elf = mods->elf(**m);
  ASSERT_TRUE(elf.ok());
  auto pick = (*elf)->lookup_one("hp_fx_pick");
  ASSERT_TRUE(pick.ok());
  ASSERT_TRUE(pick->symbol->is_ifunc());
  auto impl = mods->resolve_ifunc(**m, *pick->symbol);
  ASSERT_TRUE(impl.ok()) << impl.error().message();
  EXPECT_EQ(impl->module, *m);
  EXPECT_EQ(impl->address,
            reinterpret_cast<std::uintptr_t>(::dlsym(lib.handle, "hp_fx_pick_impl_b")));
  EXPECT_EQ(impl->file_offset, (*elf)->lookup_one("hp_fx_pick_impl_b")->file_offset);
  auto fn = reinterpret_cast<int (*)()>(::dlsym(lib.handle, "hp_fx_pick"));
  ASSERT_NE(fn, nullptr);
  EXPECT_EQ(fn(), 20);
  EXPECT_EQ(mods->describe(impl->address), "libhp_elf_fixture.so!hp_fx_pick_impl_b");

  auto not_ifunc = mods->resolve_ifunc(**m, *(*elf)->lookup_one("hp_fx_add")->symbol);
  ASSERT_FALSE(not_ifunc.ok());
  EXPECT_EQ(not_ifunc.error().code(), Errc::invalid_argument);

  auto outside = ModuleList::of_process(::getpid());
  ASSERT_TRUE(outside.ok());
  const Module* om = outside->find((*m)->key);
  ASSERT_NE(om, nullptr);
  auto remote = outside->resolve_ifunc(*om, *pick->symbol);
  ASSERT_FALSE(remote.ok());
  EXPECT_EQ(remote.error().code(), Errc::unsupported);
  EXPECT_NE(remote.error().message().find("from outside"), std::string::npos);
}

TEST(Symbols, LibcIfuncsResolveInsideLibc) {
  auto mods = ModuleList::of_self();
  ASSERT_TRUE(mods.ok()) << mods.error().message();
  auto libc = mods->resolve("libc");
  ASSERT_TRUE(libc.ok()) << libc.error().message();
  auto elf = mods->elf(**libc);
  ASSERT_TRUE(elf.ok()) << elf.error().message();
  void* h = ::dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
  ASSERT_NE(h, nullptr);
  for (const char* name : {"strlen", "memcpy", "memmove", "strchr"}) {
    auto t = (*elf)->lookup_one(name);
    ASSERT_TRUE(t.ok()) << t.error().message();
    ASSERT_TRUE(t->symbol->is_ifunc()) << name;
    auto impl = mods->resolve_ifunc(**libc, *t->symbol);
    ASSERT_TRUE(impl.ok()) << impl.error().message();
    EXPECT_EQ(impl->module, *libc) << name;
    EXPECT_EQ(impl->address, reinterpret_cast<std::uintptr_t>(::dlsym(h, name))) << name;
    // Not the resolver itself, and in libc's code.
    EXPECT_NE(impl->address, (*libc)->offset_to_address(t->file_offset).value()) << name;
    EXPECT_TRUE((*elf)->offset_is_code(impl->file_offset)) << name;
    // Unpatched code in memory is the file's bytes.
    auto bytes = mods->read_file_bytes(**libc, impl->file_offset, 16);
    ASSERT_TRUE(bytes.ok()) << bytes.error().message();
    EXPECT_EQ(std::memcmp(bytes->data(), reinterpret_cast<const void*>(impl->address), 16), 0);
    std::printf("%s -> %s (file offset %s)\n", name, mods->describe(impl->address).c_str(),
                hex(impl->file_offset).c_str());
  }
  // The old memcpy version is a plain function under its versioned name.
  auto old = (*elf)->lookup_one("memcpy@GLIBC_2.2.5");
  ASSERT_TRUE(old.ok()) << old.error().message();
  EXPECT_FALSE(old->symbol->is_ifunc());
  EXPECT_NE(old->file_offset, (*elf)->lookup_one("memcpy")->file_offset);
  ::dlclose(h);
}

TEST(Symbols, StrippedLibraryErrorsSaySo) {
  auto mods = ModuleList::of_self();
  ASSERT_TRUE(mods.ok());
  auto libc = mods->resolve("libc.so.6");
  ASSERT_TRUE(libc.ok());
  auto elf = mods->elf(**libc);
  ASSERT_TRUE(elf.ok());
  if ((*elf)->has_symtab()) GTEST_SKIP() << "libc has a .symtab here";
  auto r = (*elf)->lookup("mallocc");
  ASSERT_FALSE(r.ok());
  const std::string& msg = r.error().message();
  EXPECT_NE(msg.find("did you mean 'malloc'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("stripped"), std::string::npos) << msg;
  if (!(*elf)->debuglink().empty()) {
    EXPECT_NE(msg.find((*elf)->debuglink()), std::string::npos) << msg;
  }
}

TEST(Symbols, ReadBytesMatchesMemory) {
  Loaded lib;
  ASSERT_NE(lib.handle, nullptr);
  auto mods = ModuleList::of_self();
  ASSERT_TRUE(mods.ok());
  auto m = mods->resolve("libhp_elf_fixture.so");
  ASSERT_TRUE(m.ok());
  auto elf = mods->elf(**m);
  ASSERT_TRUE(elf.ok());
  auto t = (*elf)->lookup_one("handle_alpha");
  ASSERT_TRUE(t.ok());
  auto bytes = mods->read_file_bytes(**m, t->file_offset, 6);
  ASSERT_TRUE(bytes.ok()) << bytes.error().message();
  const std::vector<std::uint8_t> expected = {0xb8, 0x01, 0x00,
                                              0x00, 0x00, 0xc3};  // mov eax,1; ret
  EXPECT_EQ(*bytes, expected);
  EXPECT_EQ(std::memcmp(bytes->data(), ::dlsym(lib.handle, "handle_alpha"), 6), 0);
  auto past = mods->read_file_bytes(**m, (*elf)->file_size() - 2, 4);
  ASSERT_FALSE(past.ok());
  EXPECT_EQ(past.error().code(), Errc::invalid_argument);
  EXPECT_NE(past.error().message().find("the file has"), std::string::npos);
  auto empty = mods->read_file_bytes(**m, (*elf)->file_size(), 0);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

TEST(Symbols, BadFilesAreClearErrors) {
  auto missing = load_elf("/no/such/file.so");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().code(), Errc::not_found);
  EXPECT_NE(missing.error().message().find("/no/such/file.so"), std::string::npos);
  auto dir = load_elf("/");
  ASSERT_FALSE(dir.ok());
  EXPECT_EQ(dir.error().code(), Errc::invalid_argument);
  EXPECT_NE(dir.error().message().find("not a regular file"), std::string::npos);
  auto text = load_elf("/proc/self/exe/../../../etc/passwd");  // not a directory either
  EXPECT_FALSE(text.ok());
  auto passwd = load_elf("/etc/passwd");
  ASSERT_FALSE(passwd.ok());
  EXPECT_EQ(passwd.error().code(), Errc::invalid_argument);
  EXPECT_NE(passwd.error().message().find("not an ELF file"), std::string::npos)
      << passwd.error().message();
  // The wrong key for a path: the file was "replaced".
  struct stat st;
  ASSERT_EQ(::stat("/etc/passwd", &st), 0);
  auto replaced = load_elf(ModuleKey{st.st_dev, st.st_ino + 1000000007}, fixture_lib());
  ASSERT_FALSE(replaced.ok());
  EXPECT_EQ(replaced.error().code(), Errc::not_found);
  EXPECT_NE(replaced.error().message().find("replaced on disk"), std::string::npos);
}

// Loaded once however many threads ask at once (run under TSan too).
// A library deleted after it was loaded (an upgrade replaced it): the kernel still has the
// mapped file, and the symbols and bytes come from /proc/self/map_files.
TEST(Symbols, DeletedLibraryIsReadThroughMapFiles) {
  char tmpl[] = "/tmp/hp_elf_deleted_XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string copy = std::string(tmpl) + "/libhp_elf_gone.so";
  {
    std::ifstream in(fixture_lib(), std::ios::binary);
    std::ofstream out(copy, std::ios::binary);
    out << in.rdbuf();
    ASSERT_TRUE(out.good());
  }
  void* h = ::dlopen(copy.c_str(), RTLD_NOW | RTLD_LOCAL);
  ASSERT_NE(h, nullptr) << ::dlerror();
  ASSERT_EQ(::unlink(copy.c_str()), 0);
  ASSERT_EQ(::rmdir(tmpl), 0);
  auto mods = ModuleList::of_self();
  ASSERT_TRUE(mods.ok()) << mods.error().message();
  auto m = mods->resolve("libhp_elf_gone.so");
  ASSERT_TRUE(m.ok()) << m.error().message();
  EXPECT_TRUE((*m)->path.ends_with(" (deleted)")) << (*m)->path;
  auto elf = mods->elf(**m);
  ASSERT_TRUE(elf.ok()) << elf.error().message();
  EXPECT_EQ((*elf)->key(), (*m)->key);
  auto t = (*elf)->lookup_one("handle_gamma");
  ASSERT_TRUE(t.ok()) << t.error().message();
  void* fn = ::dlsym(h, "handle_gamma");
  EXPECT_EQ((*m)->offset_to_address(t->file_offset).value(), reinterpret_cast<std::uintptr_t>(fn));
  auto bytes = mods->read_file_bytes(**m, t->file_offset, t->symbol->size);
  ASSERT_TRUE(bytes.ok()) << bytes.error().message();
  EXPECT_EQ(std::memcmp(bytes->data(), fn, bytes->size()), 0);
  ::dlclose(h);
}

// The first test in this program to load libhp_elf_bulk.so through the cache.
TEST(Symbols, CacheLoadsEachFileOnce) {
  const std::uint64_t before = elf_files_parsed();
  std::vector<std::shared_ptr<const ElfFile>> got(8);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < got.size(); ++i) {
    threads.emplace_back([&, i] {
      auto r = load_elf(bulk_lib());
      if (r.ok()) got[i] = *r;
      auto t = got[i] ? got[i]->lookup("hp_bulk_12*") : Result<std::vector<Target>>(Error());
      (void)t;
    });
  }
  for (auto& t : threads)
    t.join();
  for (const auto& g : got) {
    ASSERT_TRUE(g);
    EXPECT_EQ(g.get(), got[0].get());
  }
  EXPECT_EQ(elf_files_parsed() - before, 1u);
  auto again = load_elf(bulk_lib());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->get(), got[0].get());
  EXPECT_EQ(elf_files_parsed() - before, 1u);
}

TEST(Symbols, ConcurrentSnapshotsAndLookups) {
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      for (int k = 0; k < 20; ++k) {
        auto mods = ModuleList::of_self();
        if (!mods.ok()) {
          ++failures;
          continue;
        }
        auto libc = mods->resolve("libc");
        if (!libc.ok()) {
          ++failures;
          continue;
        }
        auto elf = mods->elf(**libc);
        if (!elf.ok() || !(*elf)->lookup_one("malloc").ok()) ++failures;
      }
    });
  }
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(failures.load(), 0);
}

// Not a timed test: it prints how long parsing takes (min and median of 11 runs) so the
// figure can be quoted; it only checks the content.
TEST(Symbols, LoadTimeOf10000SymbolLibrary) {
  auto measure = [](const std::string& path, size_t* count) {
    std::vector<double> ms;
    for (int i = 0; i < 11; ++i) {
      int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      EXPECT_GE(fd, 0) << path;
      auto t0 = std::chrono::steady_clock::now();
      auto r = load_elf_uncached(fd, path);
      auto t1 = std::chrono::steady_clock::now();
      EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message());
      if (r.ok()) *count = (*r)->symbols().size();
      ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    return std::make_pair(ms.front(), ms[ms.size() / 2]);
  };
  size_t n = 0;
  auto [min_ms, median_ms] = measure(bulk_lib(), &n);
  EXPECT_GE(n, 10000u);  // plus the C runtime's _init, _fini, frame_dummy...
  std::printf("load %s: %zu functions, min %.3f ms, median %.3f ms\n", bulk_lib().c_str(), n,
              min_ms, median_ms);
  ::testing::Test::RecordProperty("bulk_load_median_us", static_cast<int>(median_ms * 1000));
  auto f = load_elf(bulk_lib());
  ASSERT_TRUE(f.ok());
  auto all = (*f)->lookup("hp_bulk_*");
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->size(), 10000u);
  EXPECT_TRUE((*f)->lookup_one("hp_bulk_0").ok());
  EXPECT_TRUE((*f)->lookup_one("hp_bulk_9999").ok());
  EXPECT_FALSE((*f)->lookup_one("hp_bulk_10000").ok());
  auto glob = (*f)->lookup("hp_bulk_99*");
  ASSERT_TRUE(glob.ok());
  EXPECT_EQ(glob->size(), 111u);  // 99, 990-999, 9900-9999

  Dl_info info;
  if (::dladdr(reinterpret_cast<void*>(&std::terminate), &info) && info.dli_fname) {
    auto [lmin, lmed] = measure(info.dli_fname, &n);
    std::printf("load %s: %zu functions, min %.3f ms, median %.3f ms\n", info.dli_fname, n, lmin,
                lmed);
  }
  if (::dladdr(reinterpret_cast<void*>(&::getpid), &info) && info.dli_fname) {
    auto [lmin, lmed] = measure(info.dli_fname, &n);
    std::printf("load %s: %zu functions, min %.3f ms, median %.3f ms\n", info.dli_fname, n, lmin,
                lmed);
  }
}

}  // namespace
}  // namespace hp::elf
