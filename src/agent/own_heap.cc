// The agent's operator new and delete: memory of its own, never the program's malloc.
//
// Everything the agent allocates with new (the engine, the script's maps, their per-thread
// shards made inside a probe handler on a program thread, the reporter's buffers) comes
// from anonymous mappings the agent makes itself. With the program's malloc, a chunk the
// agent allocated and freed on a program thread went into that thread's malloc cache
// (tcache), and glibc's flush of the cache at the thread's end freed it again through
// `free`, where a `uprobe:libc:free` probe counted it as the program's; the agent's
// allocations also took chunks from the program's caches and arenas. Replacing operator
// new in the agent's own link (the agent links libstdc++ statically and exports nothing
// but its entry points, agent.map) changes nothing for the program's own operator new.
//
// Small blocks (32 B to 64 KiB, header included) come in 12 power-of-two classes carved
// from 1 MiB mappings, each class with a free list; larger ones are mappings of their own.
// Every block's memory has a 16-byte header before the pointer returned, naming the class
// (or a mapping of its own) and the block's start, so that aligned new is a block with room
// to align inside. One mutex for all (the agent allocates off the hot path: a thread's
// first hit, a map's growth). A fork does not hold it: a program's fork handler may hit a
// probe whose handler allocates, which would wait forever on the forking thread's own
// lock. The child makes a new mutex instead, and each store under the lock is ordered so
// that another thread's allocation cut short by the fork can only lose its block in the
// child, never leave a list pointing at garbage. Memory of small blocks goes back to the
// classes, not to the kernel.
//
// Not in sanitizer builds: there the sanitizer's operator new checks the agent's memory.
#include <pthread.h>
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <new>

#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)

namespace {

constexpr std::size_t kHeader = 16;
constexpr std::uint32_t kMagic = 0x68706b68;  // "hkph"
constexpr int kClasses = 12;                  // 32 B .. 64 KiB: (32 << c)
constexpr std::uint32_t kLarge = 0xffff;
constexpr std::size_t kChunk = 1 << 20;

struct Header {
  std::uint32_t magic;
  std::uint32_t cls;  // 0..kClasses-1, or kLarge
  void* base;         // the block's start (the header is there unless aligned)
};
static_assert(sizeof(Header) == kHeader);

struct FreeBlock {
  FreeBlock* next;
};

pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

// The lock, or (HP_OWN_HEAP_UNLOCKED: tests/agent's broken variant only) none.
void lock() {
#ifndef HP_OWN_HEAP_UNLOCKED
  pthread_mutex_lock(&g_mu);
#endif
}
void unlock() {
#ifndef HP_OWN_HEAP_UNLOCKED
  pthread_mutex_unlock(&g_mu);
#endif
}
FreeBlock* g_free[kClasses] = {};
char* g_bump = nullptr;
char* g_bump_end = nullptr;

std::size_t class_size(int c) {
  return std::size_t{32} << c;
}

// What is left of the current chunk. A fork child may find a chunk switch cut short: the
// switch's three stores keep `g_bump > g_bump_end` (no room) until the new chunk is whole.
std::size_t room() {
  return g_bump && g_bump <= g_bump_end ? static_cast<std::size_t>(g_bump_end - g_bump) : 0;
}

int class_of(std::size_t bytes) {
  for (int c = 0; c < kClasses; ++c)
    if (bytes <= class_size(c)) return c;
  return -1;
}

void* map_pages(std::size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? nullptr : p;
}

// A block of at least `bytes` (header included) and its class; null when out of memory.
void* take(std::size_t bytes, std::uint32_t& cls) {
  const int c = class_of(bytes);
  if (c < 0) {
    const std::size_t total = (bytes + 4095) & ~std::size_t{4095};
    void* p = map_pages(total);
    if (!p) return nullptr;
    *static_cast<std::size_t*>(p) = total;  // read back by give(); the header follows
    cls = kLarge;
    return p;
  }
  cls = static_cast<std::uint32_t>(c);
  lock();
  void* out = nullptr;
  if (FreeBlock* f = g_free[c]) {
    __atomic_store_n(&g_free[c], f->next, __ATOMIC_RELEASE);
    out = f;
  } else {
    const std::size_t size = class_size(c);
    if (room() < size) {
      // The rest of the old chunk goes to the free lists of the classes it fits.
      while (room() >= 32) {
        int k = kClasses - 1;
        while (class_size(k) > room())
          --k;
        auto* b = reinterpret_cast<FreeBlock*>(g_bump);
        __atomic_store_n(&g_bump, g_bump + class_size(k), __ATOMIC_RELEASE);
        b->next = g_free[k];
        __atomic_store_n(&g_free[k], b, __ATOMIC_RELEASE);
      }
      auto* chunk = static_cast<char*>(map_pages(kChunk));
      if (chunk) {
        __atomic_store_n(&g_bump_end, static_cast<char*>(nullptr), __ATOMIC_RELEASE);
        __atomic_store_n(&g_bump, chunk, __ATOMIC_RELEASE);
        __atomic_store_n(&g_bump_end, chunk + kChunk, __ATOMIC_RELEASE);
      }
    }
    if (room() >= size) {
      out = g_bump;
      __atomic_store_n(&g_bump, g_bump + size, __ATOMIC_RELEASE);
    }
  }
  unlock();
  return out;
}

void give(void* base, std::uint32_t cls) {
  if (cls == kLarge) {
    ::munmap(base, *static_cast<std::size_t*>(base));
    return;
  }
  lock();
  auto* b = static_cast<FreeBlock*>(base);
  b->next = g_free[cls];
  __atomic_store_n(&g_free[cls], b, __ATOMIC_RELEASE);
  unlock();
}

// `size` bytes aligned to `align` (a power of two, at least 16); null when out of memory.
void* allocate(std::size_t size, std::size_t align) noexcept {
  if (size > (std::size_t{1} << 47)) return nullptr;
  // A large block keeps its mapping's size in its first word: the header comes after it.
  const std::size_t lead = align > kHeader ? align : kHeader;
  std::uint32_t cls = 0;
  char* base = static_cast<char*>(take(size + lead + kHeader, cls));
  if (!base) return nullptr;
  const std::size_t skip = cls == kLarge ? kHeader : 0;
  auto at = reinterpret_cast<std::uintptr_t>(base) + skip + kHeader;
  at = (at + align - 1) & ~(std::uintptr_t{align} - 1);
  auto* h = reinterpret_cast<Header*>(at - kHeader);
  h->magic = kMagic;
  h->cls = cls;
  h->base = base;
  return reinterpret_cast<void*>(at);
}

void release(void* p) noexcept {
  if (!p) return;
  auto* h = reinterpret_cast<Header*>(static_cast<char*>(p) - kHeader);
  if (h->magic != kMagic) __builtin_trap();  // not the agent's: a bug, never the program's
  h->magic = 0;
  give(h->base, h->cls);
}

void* allocate_or_throw(std::size_t size, std::size_t align) {
  for (;;) {
    if (void* p = allocate(size, align)) return p;
    std::new_handler handler = std::get_new_handler();
    if (!handler) throw std::bad_alloc();
    handler();
  }
}

// In a fork child the mutex may be held by a thread that does not exist there.
void new_mutex_in_child() {
  pthread_mutex_init(&g_mu, nullptr);
}
[[gnu::constructor(101)]] void register_fork_handler() {
  pthread_atfork(nullptr, nullptr, new_mutex_in_child);
}

constexpr std::size_t kDefault =
    __STDCPP_DEFAULT_NEW_ALIGNMENT__ > kHeader ? __STDCPP_DEFAULT_NEW_ALIGNMENT__ : kHeader;

std::size_t aligned(std::align_val_t a) {
  const auto v = static_cast<std::size_t>(a);
  return v > kDefault ? v : kDefault;
}

}  // namespace

void* operator new(std::size_t n) {
  return allocate_or_throw(n, kDefault);
}
void* operator new[](std::size_t n) {
  return allocate_or_throw(n, kDefault);
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  return allocate(n, kDefault);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return allocate(n, kDefault);
}
void* operator new(std::size_t n, std::align_val_t a) {
  return allocate_or_throw(n, aligned(a));
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return allocate_or_throw(n, aligned(a));
}
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return allocate(n, aligned(a));
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return allocate(n, aligned(a));
}
void operator delete(void* p) noexcept {
  release(p);
}
void operator delete[](void* p) noexcept {
  release(p);
}
void operator delete(void* p, std::size_t) noexcept {
  release(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  release(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  release(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
  release(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  release(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  release(p);
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
  release(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  release(p);
}
void operator delete(void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  release(p);
}
void operator delete[](void* p, std::align_val_t, const std::nothrow_t&) noexcept {
  release(p);
}

#endif
