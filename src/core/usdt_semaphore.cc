// USDT semaphores (core/usdt_semaphore.h).
#include "core/usdt_semaphore.h"

#include <atomic>
#include <mutex>
#include <unordered_map>

namespace hp::core {

namespace {

struct Semaphore {
  std::uint64_t vaddr = 0;     // link-time address in the site's file
  std::uintptr_t address = 0;  // in this process; 0: not known yet
  unsigned attached = 0;       // consumers probing the site now
};

struct Table {
  std::mutex mu;
  std::unordered_map<SiteKey, Semaphore, SiteKeyHash> sites;
  std::atomic<bool> any{false};
};

Table& table() {
  static Table* t = new Table;  // never destroyed: a detach may run in an atexit handler
  return *t;
}

void add(std::uintptr_t address, int delta) {
  auto* counter = reinterpret_cast<std::uint16_t*>(address);
  __atomic_fetch_add(counter, static_cast<std::uint16_t>(delta), __ATOMIC_RELAXED);
}

}  // namespace

std::uintptr_t usdt_semaphore_address(const elf::ModuleList& mods, const SiteKey& site,
                                      std::uint64_t semaphore_vaddr) {
  const elf::Module* m = mods.find(elf::ModuleKey{site.dev, site.ino});
  if (!m) return 0;
  // By the load bias, not by file offset: the data segment's first file page is mapped
  // twice (read-only, as the end of the segment before it, and writable), and only the
  // writable copy is the program's semaphore.
  std::uintptr_t bias = m->load_bias;
  if (!m->dl_loaded) {
    auto b = mods.compute_load_bias(*m);
    if (!b.ok()) return 0;
    bias = *b;
  }
  const std::uintptr_t a = bias + semaphore_vaddr;
  return m->contains(a) ? a : 0;
}

void note_usdt_semaphore(const SiteKey& site, std::uint64_t semaphore_vaddr,
                         std::uintptr_t address) {
  Table& t = table();
  std::lock_guard lock(t.mu);
  Semaphore& s = t.sites[site];
  s.vaddr = semaphore_vaddr;
  // A site probed now keeps the address it raised (its module cannot go away under it).
  if (s.attached == 0) s.address = address;
  t.any.store(true, std::memory_order_release);
}

namespace {

// Runs `fn` on the noted semaphore of `site` under the table's lock (nothing when the site
// is no noted USDT site: one relaxed load while no USDT probe was ever resolved).
template <typename Fn>
void with_semaphore(const SiteKey& site, Fn fn) {
  Table& t = table();
  if (!t.any.load(std::memory_order_acquire)) return;
  std::lock_guard lock(t.mu);
  if (auto it = t.sites.find(site); it != t.sites.end()) fn(it->second);
}

}  // namespace

void usdt_site_attached(const SiteKey& site) {
  with_semaphore(site, [&](Semaphore& s) {
    if (s.attached == 0 && s.address == 0) {
      // A library loaded after the probe was resolved: find it now.
      if (auto mods = elf::ModuleList::of_self(); mods.ok())
        s.address = usdt_semaphore_address(*mods, site, s.vaddr);
    }
    if (s.address == 0) return;
    s.attached++;
    add(s.address, 1);
  });
}

void usdt_site_detached(const SiteKey& site) {
  with_semaphore(site, [](Semaphore& s) {
    if (s.attached == 0) return;
    add(s.address, -1);
    if (--s.attached == 0) s.address = 0;  // found again next time (the library may move)
  });
}

void usdt_site_unmapped(const SiteKey& site) {
  with_semaphore(site, [](Semaphore& s) {
    s.attached = 0;
    s.address = 0;
  });
}

int usdt_semaphore_value(const SiteKey& site) {
  Table& t = table();
  std::lock_guard lock(t.mu);
  auto it = t.sites.find(site);
  if (it == t.sites.end() || it->second.address == 0) return -1;
  return __atomic_load_n(reinterpret_cast<const std::uint16_t*>(it->second.address),
                         __ATOMIC_RELAXED);
}

}  // namespace hp::core
