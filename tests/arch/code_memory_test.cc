// Trampoline memory: reach, slot reuse, W^X, fork, and concurrent use (run under TSan).
#include "arch/x86_64/code_memory.h"

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "arch/x86_64/emit.h"

namespace hp::arch {
namespace {

std::uint64_t addr(const void* p) {
  return reinterpret_cast<std::uint64_t>(p);
}

__attribute__((noinline)) int some_function() {
  return 1;
}

// mov eax, imm32; ret
std::vector<std::uint8_t> return_constant(std::uint32_t v) {
  return {0xb8,
          static_cast<std::uint8_t>(v),
          static_cast<std::uint8_t>(v >> 8),
          static_cast<std::uint8_t>(v >> 16),
          static_cast<std::uint8_t>(v >> 24),
          0xc3};
}

int call(const CodeSlot& s) {
  return reinterpret_cast<int (*)()>(s.address)();
}

bool in_reach(std::uint64_t a, std::uint64_t near) {
  const std::uint64_t d = a > near ? a - near : near - a;
  return d <= static_cast<std::uint64_t>(kCodeReach);
}

TEST(ArchCodeMemory, SlotsAreInReachAndRun) {
  CodeMemory mem(256, 64 * 1024);
  const std::uint64_t near = addr(reinterpret_cast<void*>(some_function));
  auto a = mem.allocate(near);
  auto b = mem.allocate(near);
  ASSERT_TRUE(a.ok() && b.ok()) << (a.ok() ? b.error().message() : a.error().message());
  EXPECT_NE(a->address, b->address);
  EXPECT_TRUE(in_reach(a->address, near) && in_reach(a->address + a->size, near));
  EXPECT_TRUE(in_rel32_reach(near + 5, a->address));
  ASSERT_TRUE(mem.write(a.value(), return_constant(11)).ok());
  ASSERT_TRUE(mem.write(b.value(), return_constant(22)).ok());
  EXPECT_EQ(call(a.value()), 11);
  EXPECT_EQ(call(b.value()), 22);
  EXPECT_EQ(mem.used_slots(), 2u);
  EXPECT_EQ(mem.chunk_count(), 1u);
}

TEST(ArchCodeMemory, FreedSlotsAreReused) {
  CodeMemory mem(256, 4096);
  const std::uint64_t near = addr(reinterpret_cast<void*>(some_function));
  std::vector<CodeSlot> slots;
  for (int i = 0; i < 16; ++i)
    slots.push_back(mem.allocate(near).value());  // one page
  EXPECT_EQ(mem.chunk_count(), 1u);
  const CodeSlot freed = slots[5];
  mem.free(freed);
  auto again = mem.allocate(near);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->address, freed.address);
  EXPECT_EQ(mem.chunk_count(), 1u);
  ASSERT_TRUE(mem.allocate(near).ok());  // the page is full: a second chunk
  EXPECT_EQ(mem.chunk_count(), 2u);
}

TEST(ArchCodeMemory, FarApartAddressesGetTheirOwnChunks) {
  CodeMemory mem(256, 4096);
  const std::uint64_t exe = addr(reinterpret_cast<void*>(some_function));
  const std::uint64_t lib = addr(reinterpret_cast<void*>(&::write));
  if (in_reach(exe, lib)) GTEST_SKIP() << "the executable and libc are within 2 GiB here";
  auto a = mem.allocate(exe);
  auto b = mem.allocate(lib);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(in_reach(a->address, exe));
  EXPECT_TRUE(in_reach(b->address, lib));
  EXPECT_EQ(mem.chunk_count(), 2u);
}

TEST(ArchCodeMemory, NothingInReachIsAnError) {
  CodeMemory mem(256, 4096);
  // The top of the address space and the zero page have no room within 2 GiB that a user
  // mapping may use.
  auto r = mem.allocate(0xffff'ffff'0000'0000ULL);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code(), Errc::no_memory_in_reach);
  EXPECT_NE(r.error().message().find("0xffffffff00000000"), std::string::npos);
}

TEST(ArchCodeMemory, NoMappingIsWritableAndExecutable) {
  CodeMemory mem;
  auto s = mem.allocate(addr(reinterpret_cast<void*>(some_function)));
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(mem.write(s.value(), return_constant(3)).ok());
  std::ifstream maps("/proc/self/maps");
  std::string line;
  bool found_exec = false;
  while (std::getline(maps, line)) {
    if (line.find("hotprobe-trampolines") == std::string::npos) continue;
    const std::string perms = line.substr(line.find(' ') + 1, 4);
    EXPECT_FALSE(perms[1] == 'w' && perms[2] == 'x') << line;
    if (perms[2] == 'x') {
      unsigned long long lo = 0, hi = 0;
      std::sscanf(line.c_str(), "%llx-%llx", &lo, &hi);
      if (s->address >= lo && s->address < hi) found_exec = true;
    }
  }
  EXPECT_TRUE(found_exec);
}

TEST(ArchCodeMemory, WritesCheckTheSlotSize) {
  CodeMemory mem(64, 4096);
  auto s = mem.allocate(addr(reinterpret_cast<void*>(some_function)));
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(mem.write(s.value(), std::vector<std::uint8_t>(65, 0x90)).error().code(),
            Errc::invalid_argument);
  EXPECT_EQ(mem.write_at(s.value(), 60, std::vector<std::uint8_t>(5, 0x90)).error().code(),
            Errc::invalid_argument);
}

// A fork child keeps the code it inherited even when the parent reuses the slot.
TEST(ArchCodeMemory, ForkChildHasItsOwnCopy) {
  CodeMemory mem;
  auto s = mem.allocate(addr(reinterpret_cast<void*>(some_function)));
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(mem.write(s.value(), return_constant(1)).ok());
  int to_child[2], to_parent[2];
  ASSERT_EQ(pipe(to_child), 0);
  ASSERT_EQ(pipe(to_parent), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    char c;
    if (read(to_child[0], &c, 1) != 1) _exit(10);
    const int before = call(s.value());
    // The child's own writes do not reach the parent either.
    if (!mem.write(s.value(), return_constant(7)).ok()) _exit(11);
    if (write(to_parent[1], "x", 1) != 1) _exit(12);
    _exit(before == 1 && call(s.value()) == 7 ? 0 : 20 + before);
  }
  ASSERT_TRUE(mem.write(s.value(), return_constant(2)).ok());  // the parent reuses the slot
  ASSERT_EQ(write(to_child[1], "x", 1), 1);
  char c;
  ASSERT_EQ(read(to_parent[0], &c, 1), 1);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the child saw the parent's write (22) or failed";
  EXPECT_EQ(call(s.value()), 2);
  for (int fd : {to_child[0], to_child[1], to_parent[0], to_parent[1]})
    close(fd);
}

TEST(ArchCodeMemory, ConcurrentAllocateWriteRunFree) {
  CodeMemory mem(64, 16 * 1024);
  const std::uint64_t near = addr(reinterpret_cast<void*>(some_function));
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 500; ++i) {
        auto s = mem.allocate(near);
        if (!s.ok()) {
          ++failures;
          continue;
        }
        const std::uint32_t v = static_cast<std::uint32_t>(t * 1000 + i);
        if (!mem.write(s.value(), return_constant(v)).ok() ||
            call(s.value()) != static_cast<int>(v)) {
          ++failures;
        }
        mem.free(s.value());
      }
    });
  }
  for (auto& th : threads)
    th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(mem.used_slots(), 0u);
}

}  // namespace
}  // namespace hp::arch
