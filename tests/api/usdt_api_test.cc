// USDT probes and addresses as probe targets (include/hotprobe/probe.h): MODULE:usdt:...
// places an instruction probe at every site of the matching notes of this test program,
// @0xADDR a probe at an address of this process.
#include <sys/sdt.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "hotprobe/probe.h"
#include "hotprobe/usdt.h"

extern "C" {
long hp_usdt_sink;

// One probe inlined into two functions: two sites, two notes.
static inline __attribute__((always_inline)) void hp_usdt_inl(long v) {
  DTRACE_PROBE1(hpapi, inl, v);
  __atomic_fetch_add(&hp_usdt_sink, v, __ATOMIC_RELAXED);
}
__attribute__((noinline, used)) void hp_usdt_copy_one() {
  hp_usdt_inl(1);
}
__attribute__((noinline, used)) void hp_usdt_copy_two() {
  hp_usdt_inl(2);
}
__attribute__((noinline, used)) void hp_usdt_other(long v) {
  DTRACE_PROBE2(hpapi, other, v, v + 1);
  __atomic_fetch_add(&hp_usdt_sink, v, __ATOMIC_RELAXED);
}
// Known instruction lengths: a 4-byte `lea`, then a 1-byte `ret`.
asm(R"(
        .text
        .globl  hp_usdt_known
        .type   hp_usdt_known, @function
hp_usdt_known:
        leaq    1(%rdi), %rax
        nop
        nop
        nop
        nop
        ret
        .size   hp_usdt_known, .-hp_usdt_known
)");
long hp_usdt_known(long);
}

namespace {

struct Hits {
  std::atomic<long> n{0};
  std::atomic<std::uint64_t> last{0};
};

void on_hit(hotprobe::Hit& h) {
  auto* hits = static_cast<Hits*>(h.cookie);
  hits->n.fetch_add(1, std::memory_order_relaxed);
  hits->last.store(h.probe_address, std::memory_order_relaxed);
}

std::unique_ptr<hotprobe::Engine> engine() {
  auto e = hotprobe::Engine::create();
  EXPECT_TRUE(e.ok()) << e.error().message();
  return std::move(*e);
}

hotprobe::ProbeSpec spec_of(std::string target, Hits& hits) {
  hotprobe::ProbeSpec s;
  s.target = std::move(target);
  s.on_entry = on_hit;
  s.cookie = &hits;
  return s;
}

std::string at(const void* p) {
  char b[32];
  std::snprintf(b, sizeof b, "@%p", p);
  return b;
}

TEST(UsdtTarget, EverySiteOfAProbeInlinedTwiceIsProbed) {
  auto e = engine();
  Hits hits;
  auto h = e->attach(spec_of(":usdt:hpapi:inl", hits));
  ASSERT_TRUE(h.ok()) << h.error().message();
  EXPECT_EQ(h->size(), 2u);  // one handle per site
  hp_usdt_copy_one();
  hp_usdt_copy_two();
  hp_usdt_copy_two();
  EXPECT_EQ(hits.n.load(), 3);
  ASSERT_TRUE(e->detach(*h).ok());
  hp_usdt_copy_one();
  EXPECT_EQ(hits.n.load(), 3);
}

TEST(UsdtTarget, ProviderOmittedAndWildcards) {
  auto e = engine();
  Hits any_provider, all;
  auto a = e->attach(spec_of(":usdt:other", any_provider));
  auto b = e->attach(spec_of(":usdt:*", all));
  ASSERT_TRUE(a.ok()) << a.error().message();
  ASSERT_TRUE(b.ok()) << b.error().message();
  EXPECT_EQ(a->size(), 1u);
  EXPECT_GE(b->size(), 3u);  // inl twice, other
  hp_usdt_other(5);
  hp_usdt_copy_one();
  EXPECT_EQ(any_provider.n.load(), 1);
  EXPECT_EQ(all.n.load(), 2);
  // The probed address is the site's, inside hp_usdt_other.
  const auto fn = reinterpret_cast<std::uintptr_t>(&hp_usdt_other);
  EXPECT_GT(any_provider.last.load(), fn);
  EXPECT_LT(any_provider.last.load(), fn + 64);
  ASSERT_TRUE(e->detach(*a).ok());
  ASSERT_TRUE(e->detach(*b).ok());
}

TEST(UsdtTarget, ErrorsNameTheFileAndTheWayOut) {
  auto e = engine();
  Hits hits;
  auto none = e->attach(spec_of(":usdt:hpapi:nope", hits));
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.error().message().find("no USDT probe 'hpapi:nope' in /"), std::string::npos)
      << none.error().message();
  EXPECT_NE(none.error().message().find("hotprobe list 'usdt:/"), std::string::npos)
      << none.error().message();
  auto libc = e->attach(spec_of("libc:usdt:hpapi:inl", hits));
  ASSERT_FALSE(libc.ok());
  EXPECT_NE(libc.error().message().find("no USDT probe"), std::string::npos)
      << libc.error().message();
  auto bad = e->attach(spec_of(":usdt:a:b:c", hits));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("PROVIDER:NAME"), std::string::npos)
      << bad.error().message();
  auto ret = spec_of(":usdt:hpapi:inl", hits);
  ret.on_entry = nullptr;
  ret.on_return = on_hit;
  auto r = e->attach(ret);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message().find("not a return handler"), std::string::npos)
      << r.error().message();
}

TEST(UsdtTarget, ResolveUsdtListsTheSitesTheEngineProbes) {
  auto sites = hotprobe::resolve_usdt(":usdt:hpapi:*");
  ASSERT_TRUE(sites.ok()) << sites.error().message();
  ASSERT_EQ(sites->size(), 3u);  // inl twice, other once
  int inl = 0;
  for (const hotprobe::UsdtSite& s : *sites) {
    EXPECT_EQ(s.provider, "hpapi");
    EXPECT_NE(s.address, 0u);
    if (s.name == "inl") {
      inl++;
      ASSERT_EQ(s.args.size(), 1u);
      EXPECT_EQ(s.args[0].size, 8);
      continue;
    }
    EXPECT_EQ(s.name, "other");
    ASSERT_EQ(s.args.size(), 2u);
    const auto fn = reinterpret_cast<std::uintptr_t>(&hp_usdt_other);
    EXPECT_GT(s.address, fn);
    EXPECT_LT(s.address, fn + 64);
    // The engine probes the same address.
    auto e = engine();
    Hits hits;
    auto h = e->attach(spec_of(":usdt:hpapi:other", hits));
    ASSERT_TRUE(h.ok()) << h.error().message();
    hp_usdt_other(3);
    EXPECT_EQ(hits.last.load(), s.address);
    ASSERT_TRUE(e->detach(*h).ok());
  }
  EXPECT_EQ(inl, 2);
  auto bad = hotprobe::resolve_usdt("libc:malloc");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message().find("MODULE:usdt:PROVIDER:NAME"), std::string::npos)
      << bad.error().message();
}

TEST(AddressTarget, ProbesAFunctionByItsAddress) {
  auto e = engine();
  Hits entry, inside;
  const auto* fn = reinterpret_cast<const char*>(&hp_usdt_known);
  auto a = e->attach(spec_of(at(fn), entry));
  ASSERT_TRUE(a.ok()) << a.error().message();
  EXPECT_EQ(hp_usdt_known(41), 42);
  EXPECT_EQ(hp_usdt_known(1), 2);
  EXPECT_EQ(entry.n.load(), 2);
  EXPECT_EQ(entry.last.load(), reinterpret_cast<std::uintptr_t>(fn));
  ASSERT_TRUE(e->detach(*a).ok());
  auto b = e->attach(spec_of(at(fn + 4), inside));  // the first nop, after the 4-byte lea
  ASSERT_TRUE(b.ok()) << b.error().message();
  EXPECT_EQ(hp_usdt_known(1), 2);
  EXPECT_EQ(inside.n.load(), 1);
  EXPECT_EQ(inside.last.load(), reinterpret_cast<std::uintptr_t>(fn + 4));
  ASSERT_TRUE(e->detach(*b).ok());
  EXPECT_EQ(entry.n.load(), 2);
}

TEST(AddressTarget, RefusesWhatIsNoInstructionOfAFunction) {
  auto e = engine();
  Hits hits;
  const auto* fn = reinterpret_cast<const char*>(&hp_usdt_known);
  // Inside the lea: not an instruction boundary.
  auto mid = e->attach(spec_of(at(fn + 2), hits));
  ASSERT_FALSE(mid.ok());
  EXPECT_NE(mid.error().message().find("is inside `lea"), std::string::npos)
      << mid.error().message();
  // The heap is no module's code.
  std::vector<char> heap(64);
  auto h = e->attach(spec_of(at(heap.data()), hits));
  ASSERT_FALSE(h.ok());
  EXPECT_NE(h.error().message().find("in no module"), std::string::npos) << h.error().message();
  auto text = e->attach(spec_of("@main", hits));
  ASSERT_FALSE(text.ok());
  EXPECT_NE(text.error().message().find("@0xADDRESS"), std::string::npos) << text.error().message();
  EXPECT_EQ(hp_usdt_known(1), 2);
  EXPECT_EQ(hits.n.load(), 0);
}

}  // namespace
