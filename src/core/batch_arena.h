// BatchArena: where a batch's sites, consumers and consumer arrays live.
//
// A batch of 10,000 probes made 30,000 of them with malloc, and the grace-period worker
// freed them again beside the next batch: glibc's slow paths both ways (about 200
// instructions each, the arena lock taken in turn by two threads), and objects of one
// probe scattered over the heap. While a BatchArena::Scope is open on a thread, those
// objects are carved one after the other from 64 KiB blocks; a block is freed when its
// last object is (a count in the block, so any thread may free any object), and a scope
// stops carving from a block when it closes. Outside a scope they come from the heap.
// Every object carries its block's address (or null) in the 16 bytes before it.
//
// A block lives while any of its objects does: a batch detached but for one probe keeps
// its blocks (at most 64 KiB per chunk of the batch's objects).
#pragma once

#include <atomic>
#include <cstddef>

namespace hp::core {

class BatchArena {
 public:
  // `bytes` aligned to 16, from the thread's open scope if any, else from the heap.
  static void* allocate(std::size_t bytes);
  // Frees what allocate() returned (null: nothing), from any thread.
  static void deallocate(void* p) noexcept;

  // Opens a scope on this thread (scopes do not nest).
  class Scope {
   public:
    Scope();
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;
  };

  // Blocks carved since the process started and blocks freed (tests, statistics).
  static std::size_t blocks_made() noexcept;
  static std::size_t blocks_freed() noexcept;

 private:
  struct Block;
};

// Operators for the classes whose objects live in a batch's arena.
#define HP_BATCH_ARENA_OBJECT                     \
  static void* operator new(std::size_t n) {      \
    return ::hp::core::BatchArena::allocate(n);   \
  }                                               \
  static void operator delete(void* p) noexcept { \
    ::hp::core::BatchArena::deallocate(p);        \
  }

}  // namespace hp::core
