#include "elf/maps.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstdint>
#include <unordered_set>

extern "C" __attribute__((noinline, used)) int hp_maps_test_function(int x) {
  return x * 3 + 1;
}

namespace hp::elf {
namespace {

constexpr const char* kSample =
    "55d0c8a00000-55d0c8a02000 r--p 00000000 fe:00 1234                       /usr/bin/prog\n"
    "55d0c8a02000-55d0c8a05000 r-xp 00002000 fe:00 1234                       /usr/bin/prog\n"
    "55d0c9000000-55d0c9021000 rw-p 00000000 00:00 0                          [heap]\n"
    "7f0000000000-7f0000001000 r-xs 00001000 08:11 99                         /tmp/with space"
    " in name (deleted)\n"
    "7f0000002000-7f0000003000 ---p 00000000 00:00 0 \n"
    "7ffd1000-7ffd2000 r-xp 00000000 00:00 0                                  [vdso]\n";

TEST(Maps, ParsesEveryColumn) {
  auto maps = parse_maps(kSample);
  ASSERT_TRUE(maps.ok()) << maps.error().message();
  ASSERT_EQ(maps->size(), 6u);
  const Mapping& text = (*maps)[1];
  EXPECT_EQ(text.start, 0x55d0c8a02000u);
  EXPECT_EQ(text.end, 0x55d0c8a05000u);
  EXPECT_TRUE(text.readable());
  EXPECT_FALSE(text.writable());
  EXPECT_TRUE(text.executable());
  EXPECT_EQ(text.offset, 0x2000u);
  EXPECT_EQ(text.dev_major, 0xfeu);
  EXPECT_EQ(text.dev_minor, 0u);
  EXPECT_EQ(text.inode, 1234u);
  EXPECT_EQ(text.path, "/usr/bin/prog");
  EXPECT_TRUE(text.file_backed());
  EXPECT_EQ(text.perms_string(), "r-xp");
  EXPECT_EQ(text.key(), (ModuleKey{makedev(0xfe, 0), 1234}));
  EXPECT_EQ(text.key().to_string(), "fe:00/1234");

  const Mapping& heap = (*maps)[2];
  EXPECT_FALSE(heap.file_backed());
  EXPECT_EQ(heap.path, "[heap]");

  const Mapping& deleted = (*maps)[3];
  EXPECT_EQ(deleted.path, "/tmp/with space in name (deleted)");
  EXPECT_TRUE(deleted.deleted());
  EXPECT_EQ(deleted.perms_string(), "r-xs");
  EXPECT_EQ(deleted.dev_major, 8u);
  EXPECT_EQ(deleted.dev_minor, 0x11u);

  EXPECT_EQ((*maps)[4].perms, 0);
  EXPECT_EQ((*maps)[4].path, "");
  EXPECT_FALSE((*maps)[5].file_backed());
}

TEST(Maps, MalformedLinesNameTheLine) {
  const char* bad[] = {
      "zzzz-1000 r-xp 00000000 fe:00 1 /x\n",      // start not hex
      "1000 r-xp 00000000 fe:00 1 /x\n",           // no end
      "1000-2000 rwxq 00000000 fe:00 1 /x\n",      // bad sharing flag
      "1000-2000 r-x 00000000 fe:00 1 /x\n",       // short perms
      "1000-2000 r-xp 00000000 fe00 1 /x\n",       // device without ':'
      "1000-2000 r-xp 00000000 fe:00 inode /x\n",  // inode not a number
      "2000-1000 r-xp 00000000 fe:00 1 /x\n",      // end before start
  };
  for (const char* line : bad) {
    std::string text = std::string("1000-2000 r-xp 00000000 fe:00 1 /ok\n") + line;
    auto r = parse_maps(text);
    ASSERT_FALSE(r.ok()) << line;
    EXPECT_EQ(r.error().code(), Errc::invalid_argument);
    EXPECT_NE(r.error().message().find("line 2"), std::string::npos) << r.error().message();
    EXPECT_NE(r.error().message().find("expected"), std::string::npos) << r.error().message();
  }
}

TEST(Maps, EmptyTextIsNoMappings) {
  auto r = parse_maps("");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->empty());
}

TEST(Maps, RealSelfMapsHoldsThisCode) {
  auto maps = read_maps();
  ASSERT_TRUE(maps.ok()) << maps.error().message();
  ASSERT_GT(maps->size(), 5u);
  const auto addr = reinterpret_cast<std::uintptr_t>(&hp_maps_test_function);
  const Mapping* here = nullptr;
  for (const Mapping& m : *maps) {
    if (m.contains(addr)) here = &m;
  }
  ASSERT_NE(here, nullptr);
  EXPECT_TRUE(here->executable());
  EXPECT_TRUE(here->file_backed());
  struct stat st;
  ASSERT_EQ(::stat("/proc/self/exe", &st), 0);
  EXPECT_EQ(here->key(), (ModuleKey{st.st_dev, st.st_ino}));
  // Sorted, non-overlapping, as the kernel writes them.
  for (size_t i = 1; i < maps->size(); ++i)
    EXPECT_LE((*maps)[i - 1].end, (*maps)[i].start);
}

TEST(Maps, OtherProcessByPid) {
  auto self = read_maps(::getpid());
  ASSERT_TRUE(self.ok()) << self.error().message();
  EXPECT_FALSE(self->empty());
  auto none = read_maps(0x7ffffff0);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code(), Errc::not_found);
  EXPECT_NE(none.error().message().find("no process with pid"), std::string::npos)
      << none.error().message();
}

TEST(Maps, KeyIsHashable) {
  ModuleKeyHash h;
  EXPECT_EQ(h(ModuleKey{1, 2}), h(ModuleKey{1, 2}));
  EXPECT_NE(h(ModuleKey{1, 2}), h(ModuleKey{2, 1}));
  std::unordered_set<ModuleKey> keys{{1, 2}, {2, 1}, {1, 2}};
  EXPECT_EQ(keys.size(), 2u);
}

}  // namespace
}  // namespace hp::elf
