#include "core/batch_arena.h"

#include <cstdint>
#include <new>

#include "base/assert.h"

namespace hp::core {

struct BatchArena::Block {
  // Objects carved and not yet freed, plus one while a scope carves from the block.
  std::atomic<std::size_t> refs{1};
  std::size_t used = 0;  // bytes carved, after the block's own header
};

namespace {

constexpr std::size_t kBlockBytes = 64 * 1024;
constexpr std::size_t kHeader = 16;  // before each object: its Block* (or null)
constexpr std::size_t kBlockHeader = 64;

std::atomic<std::size_t> g_blocks_made{0};
std::atomic<std::size_t> g_blocks_freed{0};

struct ThreadArena {
  bool open = false;
  void* block = nullptr;  // the block being carved (BatchArena::Block*)
};
thread_local ThreadArena t_arena;

std::size_t round16(std::size_t n) {
  return (n + 15) & ~std::size_t{15};
}

}  // namespace

void* BatchArena::allocate(std::size_t bytes) {
  const std::size_t need = kHeader + round16(bytes);
  ThreadArena& t = t_arena;
  if (!t.open || need > kBlockBytes - kBlockHeader) {
    auto* raw = static_cast<unsigned char*>(::operator new(need));
    *reinterpret_cast<Block**>(raw) = nullptr;
    return raw + kHeader;
  }
  auto* b = static_cast<Block*>(t.block);
  if (!b || b->used + need > kBlockBytes - kBlockHeader) {
    if (b && b->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      b->~Block();
      ::operator delete(b);
      g_blocks_freed.fetch_add(1, std::memory_order_relaxed);
    }
    static_assert(sizeof(Block) <= kBlockHeader);
    b = new (::operator new(kBlockBytes)) Block;
    g_blocks_made.fetch_add(1, std::memory_order_relaxed);
    t.block = b;
  }
  auto* raw = reinterpret_cast<unsigned char*>(b) + kBlockHeader + b->used;
  b->used += need;
  b->refs.fetch_add(1, std::memory_order_relaxed);  // the scope's own reference holds it
  *reinterpret_cast<Block**>(raw) = b;
  return raw + kHeader;
}

void BatchArena::deallocate(void* p) noexcept {
  if (!p) return;
  auto* raw = static_cast<unsigned char*>(p) - kHeader;
  Block* b = *reinterpret_cast<Block**>(raw);
  if (!b) {
    ::operator delete(raw);
    return;
  }
  if (b->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    b->~Block();
    ::operator delete(b);
    g_blocks_freed.fetch_add(1, std::memory_order_relaxed);
  }
}

BatchArena::Scope::Scope() {
  HP_CHECK_MSG(!t_arena.open, "BatchArena scopes do not nest");
  t_arena.open = true;
}

BatchArena::Scope::~Scope() {
  auto* b = static_cast<Block*>(t_arena.block);
  t_arena = ThreadArena{};
  if (b && b->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    b->~Block();
    ::operator delete(b);
    g_blocks_freed.fetch_add(1, std::memory_order_relaxed);
  }
}

std::size_t BatchArena::blocks_made() noexcept {
  return g_blocks_made.load(std::memory_order_relaxed);
}

std::size_t BatchArena::blocks_freed() noexcept {
  return g_blocks_freed.load(std::memory_order_relaxed);
}

}  // namespace hp::core
