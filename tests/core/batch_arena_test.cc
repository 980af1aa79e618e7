// BatchArena (core/batch_arena.h): objects made in a scope share blocks, a block is freed
// with its last object whichever thread frees it (and not while its scope still carves
// from it), objects outside a scope come from the heap, and large ones never from a block.
#include "core/batch_arena.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace hp::core {
namespace {

struct Obj {
  HP_BATCH_ARENA_OBJECT
  std::uint64_t words[30];  // 240 bytes: a site's size
};

TEST(CoreBatchArena, AScopesObjectsShareBlocksFreedWithTheirLastObject) {
  const std::size_t made0 = BatchArena::blocks_made(), freed0 = BatchArena::blocks_freed();
  std::vector<Obj*> objs;
  {
    BatchArena::Scope scope;
    for (int i = 0; i < 1000; i++) {
      objs.push_back(new Obj);
      std::memset(objs.back()->words, i & 0xff, sizeof objs.back()->words);
      ASSERT_EQ(reinterpret_cast<std::uintptr_t>(objs.back()) % 16, 0u);
    }
  }
  const std::size_t made = BatchArena::blocks_made() - made0;
  // 1,000 objects of 256 bytes with their headers: 4 blocks of 64 KiB.
  EXPECT_GE(made, 3u);
  EXPECT_LE(made, 5u);
  EXPECT_EQ(BatchArena::blocks_freed(), freed0);
  for (int i = 0; i < 1000; i++) {
    for (std::uint64_t w : objs[i]->words)
      ASSERT_EQ(w, 0x0101010101010101ull * static_cast<std::uint64_t>(i & 0xff)) << i;
  }
  // Freed from another thread, all but the last: one block is left.
  std::thread([&] {
    for (std::size_t i = 0; i + 1 < objs.size(); i++)
      delete objs[i];
  }).join();
  EXPECT_EQ(BatchArena::blocks_freed() - freed0, made - 1);
  delete objs.back();
  EXPECT_EQ(BatchArena::blocks_freed() - freed0, made);
}

TEST(CoreBatchArena, AnOpenScopeKeepsItsBlockThoughItsObjectsAreGone) {
  const std::size_t made0 = BatchArena::blocks_made(), freed0 = BatchArena::blocks_freed();
  {
    BatchArena::Scope scope;
    delete new Obj;
    EXPECT_EQ(BatchArena::blocks_freed(), freed0);  // the scope still carves from it
    Obj* again = new Obj;                           // from the same block
    EXPECT_EQ(BatchArena::blocks_made() - made0, 1u);
    delete again;
  }
  EXPECT_EQ(BatchArena::blocks_freed() - freed0, 1u);
}

TEST(CoreBatchArena, OutsideAScopeAndLargeObjectsComeFromTheHeap) {
  const std::size_t made0 = BatchArena::blocks_made();
  Obj* outside = new Obj;
  void* large = nullptr;
  {
    BatchArena::Scope scope;
    large = BatchArena::allocate(100 * 1024);
    std::memset(large, 1, 100 * 1024);
  }
  EXPECT_EQ(BatchArena::blocks_made(), made0);
  delete outside;
  BatchArena::deallocate(large);
  BatchArena::deallocate(nullptr);
}

}  // namespace
}  // namespace hp::core
