// argN of usdt probes (run_usdt.h).
#include "script/run_usdt.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "hotprobe/usdt.h"
#include "script/run_nodes.h"

namespace hotprobe::script {

using nodes::s64;
using nodes::u;

namespace {

// The arguments of the site at `address` of probe `probe`. Published once, never changed
// nor freed (a hit may be reading it).
struct Site {
  const ProbeCtx* probe = nullptr;
  std::uint64_t address = 0;
  std::vector<UsdtArgSpec> args;
};

// Open addressing on (probe, address), read without a lock; written under `mu`.
constexpr std::size_t kSlots = 1 << 14;
struct Table {
  std::mutex mu;
  std::atomic<const Site*> slots[kSlots] = {};
};
Table& table() {
  static Table* t = new Table;  // never destroyed: hits may run during exit
  return *t;
}
std::size_t slot_of(const ProbeCtx* p, std::uint64_t address) {
  std::uint64_t h = reinterpret_cast<std::uintptr_t>(p) * 0x9E3779B97F4A7C15ull ^ address;
  h ^= h >> 29;
  h *= 0xBF58476D1CE4E5B9ull;
  return static_cast<std::size_t>(h ^ (h >> 32)) & (kSlots - 1);
}

const Site* find(const ProbeCtx* p, std::uint64_t address) {
  Table& t = table();
  for (std::size_t i = slot_of(p, address), n = 0; n < kSlots; i = (i + 1) & (kSlots - 1), n++) {
    const Site* s = t.slots[i].load(std::memory_order_acquire);
    if (!s) return nullptr;
    if (s->probe == p && s->address == address) return s;
  }
  return nullptr;
}

// Publishes `site`, replacing an older one with its key (a Runtime at the address of a
// freed one); false when the table is full.
bool publish(std::unique_ptr<Site> site) {
  Table& t = table();
  std::lock_guard lock(t.mu);
  for (std::size_t i = slot_of(site->probe, site->address), n = 0; n < kSlots;
       i = (i + 1) & (kSlots - 1), n++) {
    const Site* s = t.slots[i].load(std::memory_order_relaxed);
    if (!s || (s->probe == site->probe && s->address == site->address)) {
      t.slots[i].store(site.release(), std::memory_order_release);  // the old one leaks
      return true;
    }
  }
  return false;
}

// Where a probe's target ("MODULE:usdt:WHAT") splits.
bool split_target(const std::string& target, std::string& module, std::string& what) {
  const std::size_t at = target.find(":usdt:");
  if (at == std::string::npos) return false;
  module = target.substr(0, at);
  what = target.substr(at + 6);
  return true;
}

// Publishes the sites of `probe` that are loaded in this process.
void publish_sites(const ProbeCtx& probe, const std::vector<UsdtSite>& sites) {
  for (const UsdtSite& u : sites) {
    if (!u.address) continue;
    auto site = std::make_unique<Site>();
    site->probe = &probe;
    site->address = u.address;
    site->args = u.args;
    publish(std::move(site));
  }
}

// A hit at a site not published yet (its library was loaded after the probe was
// attached): published now.
const Site* publish_late(const ProbeCtx& probe, std::uint64_t address) {
  auto sites = resolve_usdt(probe.probe.target);
  if (!sites.ok()) return nullptr;
  publish_sites(probe, *sites);
  return find(&probe, address);
}

std::int64_t extend(std::uint64_t v, unsigned size, bool is_signed) {
  if (size >= 8) return s64(v);
  const unsigned bits = size * 8;
  v &= (std::uint64_t{1} << bits) - 1;
  if (is_signed && (v >> (bits - 1)) & 1) v |= ~std::uint64_t{0} << bits;
  return s64(v);
}

// The argument counts of the sites `ap` matches; empty when they cannot be read here (the
// attach reports why).
std::vector<std::size_t> arg_counts(const ast::AttachPoint& ap) {
  std::vector<std::size_t> out;
  auto sites = resolve_usdt(ap.probe.target);
  if (!sites.ok()) return out;
  for (const UsdtSite& u : *sites)
    out.push_back(u.args.size());
  return out;
}

}  // namespace

UsdtArgCheck check_usdt_arg(ast::Expr& e, const ast::Action& action, Diagnostics& diags) {
  const std::string& name = e.name;
  if (name.size() < 4 || name.size() > 5 || name.compare(0, 3, "arg") != 0 ||
      name.find_first_not_of("0123456789", 3) != std::string::npos ||
      (name[3] == '0' && name.size() > 4))
    return UsdtArgCheck::not_usdt;
  const ast::AttachPoint* usdt = nullptr;
  const ast::AttachPoint* other = nullptr;
  for (const ast::AttachPoint& ap : action.probes) {
    (ap.usdt ? usdt : other) = &ap;
  }
  if (!usdt) return UsdtArgCheck::not_usdt;
  if (other) {
    diags.error(e.loc, "The " + name + " builtin means an argument of the usdt probe (" +
                           usdt->probe.text + ") and a register of '" + other->probe.text +
                           "': give them separate actions");
    return UsdtArgCheck::error;
  }
  const int n = std::stoi(name.substr(3));
  if (n >= kMaxUsdtArgs) {
    diags.error(e.loc, "usdt probes have at most " + std::to_string(kMaxUsdtArgs) +
                           " arguments (arg0 to arg" + std::to_string(kMaxUsdtArgs - 1) + ")");
    return UsdtArgCheck::error;
  }
  for (const ast::AttachPoint& ap : action.probes) {
    for (std::size_t count : arg_counts(ap)) {
      if (static_cast<std::size_t>(n) < count) continue;
      diags.error(e.loc, name + " is out of range: " + ap.probe.text + " has " +
                             std::to_string(count) + " argument" + (count == 1 ? "" : "s") +
                             (count == 1  ? std::string(" (arg0)")
                              : count > 1 ? " (arg0 to arg" + std::to_string(count - 1) + ")"
                                          : std::string()));
      return UsdtArgCheck::error;
    }
  }
  e.usdt_arg = n;
  return UsdtArgCheck::ok;
}

void lower_usdt_arg(Node* n, int index) {
  n->i = i_usdt_arg;
  n->imm = index;
}

void prepare_usdt_probe(ProbeCtx& probe) {
  std::string module, what;
  if (!split_target(probe.probe.target, module, what)) return;
  auto sites = resolve_usdt(probe.probe.target);
  if (!sites.ok()) return;  // the attach reports it
  // `probe` names the probe matched, as bpftrace names each probe a wildcard expands to:
  // usdt:PATH:PROVIDER:NAME (one probe: its text; several: by the site hit). A target
  // without a file, or with a glob for one, names each site's file by its path.
  const bool by_file = module.empty() || module.find_first_of("*?[") != std::string::npos;
  std::vector<std::string> names;
  for (const UsdtSite& u : *sites) {
    std::string name = (by_file ? u.module + ":" : std::string()) + u.provider + ":" + u.name;
    if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
  }
  const std::string prefix = by_file ? std::string("usdt:") : "usdt:" + module + ":";
  const bool loaded = !sites->empty() && sites->front().address != 0;
  if (names.size() == 1) {
    probe.probe.text = prefix + names.front();
  } else if (names.size() > 1 && loaded) {
    // (In a library not loaded yet the addresses are not known: `probe` stays as written.)
    probe.glob = true;
    probe.prefix = prefix;
    std::lock_guard lock(probe.func_mu);
    for (const UsdtSite& u : *sites)
      if (u.address)
        probe.funcs[u.address] =
            (by_file ? u.module + ":" : std::string()) + u.provider + ":" + u.name;
  }
  publish_sites(probe, *sites);
}

std::int64_t i_usdt_arg(const Node* n, Frame& f) {
  if (!f.hit || !f.probe) return 0;
  const Site* site = find(f.probe, f.hit->probe_address);
  if (!site) [[unlikely]] {
    site = publish_late(*f.probe, f.hit->probe_address);
    if (!site) return 0;
  }
  const std::size_t i = static_cast<std::size_t>(n->imm);
  if (i >= site->args.size()) return 0;  // the checker refuses it where it can read the file
  const UsdtArgSpec& a = site->args[i];
  const auto* regs = reinterpret_cast<const std::uint64_t*>(f.hit->regs);
  switch (a.kind) {
    case UsdtArgSpec::Kind::reg:
      return extend(a.reg >= 0 ? regs[a.reg] >> a.shift : 0, a.size, a.is_signed);
    case UsdtArgSpec::Kind::memory: {
      std::uint64_t addr = u(a.disp);
      if (a.reg >= 0) addr += regs[a.reg];
      if (a.index >= 0) addr += regs[a.index] * a.scale;
      std::uint64_t v = 0;
      if (!read_user(addr, &v, a.size)) [[unlikely]] {
        f.rt->read_faults.fetch_add(1, std::memory_order_relaxed);
        return 0;
      }
      return extend(v, a.size, a.is_signed);
    }
    case UsdtArgSpec::Kind::constant:  // "4@$-202182160" is the uint32 4092785136
      return extend(u(a.disp), a.size, a.is_signed);
  }
  return 0;
}

}  // namespace hotprobe::script
