// ElfFile::cfi_extent: a function's extent from its FDE (.eh_frame_hdr's table, then the
// FDE), checked against the sizes the compiler gave the symbols of this test program, and
// on libc's IFUNC implementations, which a stripped libc does not size.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "elf/elf_file.h"
#include "elf/modules.h"

extern "C" int hp_cfi_probe_me(int a, int b);
extern "C" __attribute__((noinline, used)) int hp_cfi_probe_me(int a, int b) {
  int s = 0;
  for (int i = 0; i < a; i++)
    s += i * b + (s >> 3);
  return s;
}

namespace {

using hp::elf::ElfFile;

std::shared_ptr<const ElfFile> self_file() {
  auto f = hp::elf::load_elf("/proc/self/exe");
  EXPECT_TRUE(f.ok()) << f.error().message();
  return f.ok() ? *f : nullptr;
}

TEST(CfiExtent, MatchesTheCompilersSymbolSize) {
  auto f = self_file();
  ASSERT_TRUE(f);
  auto syms = f->find("hp_cfi_probe_me");
  ASSERT_EQ(syms.size(), 1u);
  const hp::elf::Symbol& s = *syms[0];
  ASSERT_GT(s.size, 4u);
  for (std::uint64_t off : {std::uint64_t{0}, std::uint64_t{1}, s.size / 2, s.size - 1}) {
    auto ext = f->cfi_extent(s.file_offset + off);
    ASSERT_TRUE(ext.has_value()) << "no FDE found at +" << off;
    EXPECT_EQ(ext->file_offset, s.file_offset) << "at +" << off;
    EXPECT_EQ(ext->size, s.size) << "at +" << off;
  }
}

// Most functions the compiler emitted have an FDE of exactly their symbol's extent (those
// with a .cold fragment have two FDEs; hand-written code may have none).
TEST(CfiExtent, AgreesWithMostSizedSymbols) {
  auto f = self_file();
  ASSERT_TRUE(f);
  std::size_t sized = 0, same = 0;
  for (const hp::elf::Symbol& s : f->symbols()) {
    if (s.size == 0 || s.fragment || s.is_ifunc()) continue;
    ++sized;
    auto ext = f->cfi_extent(s.file_offset);
    if (ext && ext->file_offset == s.file_offset && ext->size == s.size) ++same;
    if (sized == 400) break;
  }
  ASSERT_GT(sized, 50u);
  EXPECT_GT(same * 10, sized * 9) << same << " of " << sized;
}

TEST(CfiExtent, NoneOutsideCode) {
  auto f = self_file();
  ASSERT_TRUE(f);
  EXPECT_FALSE(f->cfi_extent(0).has_value());                     // the ELF header
  EXPECT_FALSE(f->cfi_extent(f->file_size() + 100).has_value());  // past the file
}

// libc's strlen is an IFUNC whose implementations (__strlen_avx2, __strlen_evex, ...) have
// no sized symbol in a stripped libc: their FDE gives the extent, starting where the
// loader's choice starts.
TEST(CfiExtent, SizesTheIfuncImplementationOfStrlen) {
  auto mods = hp::elf::ModuleList::of_self();
  ASSERT_TRUE(mods.ok()) << mods.error().message();
  auto libc = mods->resolve("libc");
  ASSERT_TRUE(libc.ok()) << libc.error().message();
  auto file = mods->elf(**libc);
  ASSERT_TRUE(file.ok()) << file.error().message();
  auto syms = (*file)->find("strlen");
  ASSERT_FALSE(syms.empty());
  if (!syms[0]->is_ifunc()) GTEST_SKIP() << "this libc's strlen is not an IFUNC";
  auto impl = mods->implementation_of(**libc, *syms[0]);
  ASSERT_TRUE(impl.ok()) << impl.error().message();
  auto ext = impl->elf->cfi_extent(impl->file_offset);
  ASSERT_TRUE(ext.has_value()) << "no FDE for strlen's implementation";
  EXPECT_EQ(ext->file_offset, impl->file_offset);
  EXPECT_GE(ext->size, 16u);
  EXPECT_LT(ext->size, 64u * 1024);
  if (impl->symbol && impl->symbol->size) {
    EXPECT_EQ(ext->size, impl->symbol->size);
  }
  // The implementation's own bytes, read where the process runs them, are what the file
  // holds at the extent (the extent is in file terms).
  auto bytes = impl->elf->read_bytes(ext->file_offset, 16);
  ASSERT_TRUE(bytes.ok());
  auto at = impl->module->offset_to_address(ext->file_offset);
  ASSERT_TRUE(at.ok()) << at.error().message();
  EXPECT_EQ(std::memcmp(bytes->data(), reinterpret_cast<const void*>(*at), 16), 0);
}

}  // namespace
