// decode_shape() against decode(): the planner's sweep uses the cheaper one, so on real
// code every field the sweep and the relocator read must agree, instruction by
// instruction. The input is libc's executable segment, swept linearly (a byte that does
// not decode is stepped over, so the sweep also lands inside data and padding).
#include <link.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <span>
#include <vector>

#include "arch/x86_64/decode.h"

namespace hp::arch {
namespace {

struct Text {
  const std::uint8_t* start = nullptr;
  std::size_t size = 0;
};

// The executable PT_LOAD segment of the object that holds `getpid` (libc).
Text libc_text() {
  struct Ctx {
    std::uintptr_t probe;
    Text out;
  } ctx{reinterpret_cast<std::uintptr_t>(&::getpid), {}};
  dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* p) {
        auto* c = static_cast<Ctx*>(p);
        for (int i = 0; i < info->dlpi_phnum; i++) {
          const auto& ph = info->dlpi_phdr[i];
          if (ph.p_type != PT_LOAD || !(ph.p_flags & PF_X)) continue;
          std::uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
          if (c->probe >= lo && c->probe < lo + ph.p_filesz) {
            c->out = {reinterpret_cast<const std::uint8_t*>(lo), ph.p_filesz};
            return 1;
          }
        }
        return 0;
      },
      &ctx);
  return ctx.out;
}

TEST(DecodeShape, AgreesWithDecodeOnLibc) {
  Text text = libc_text();
  ASSERT_NE(text.start, nullptr) << "libc's executable segment not found";
  std::span<const std::uint8_t> all(text.start, text.size);
  std::size_t compared = 0, relative = 0, undecodable = 0;
  for (std::size_t off = 0; off < all.size();) {
    auto bytes = all.subspan(off, std::min<std::size_t>(kMaxInsnLength, all.size() - off));
    const auto at = reinterpret_cast<std::uint64_t>(bytes.data());
    auto full = decode(bytes, at, /*with_text=*/false);
    auto shape = decode_shape(bytes, at);
    ASSERT_EQ(full.ok(), shape.ok()) << "at +" << off;
    if (!full.ok()) {
      EXPECT_EQ(full.error().message(), shape.error().message());
      undecodable++;
      off++;
      continue;
    }
    const Insn& f = *full;
    const Insn& s = *shape;
    ASSERT_EQ(f.length, s.length) << "at +" << off;
    ASSERT_EQ(f.kind, s.kind) << "at +" << off << ": " << text_of(f);
    ASSERT_EQ(f.rip_relative, s.rip_relative) << "at +" << off << ": " << text_of(f);
    ASSERT_EQ(f.target, s.target) << "at +" << off << ": " << text_of(f);
    ASSERT_EQ(f.rel_offset, s.rel_offset) << "at +" << off << ": " << text_of(f);
    ASSERT_EQ(f.rel_size, s.rel_size) << "at +" << off << ": " << text_of(f);
    ASSERT_EQ(f.disp_offset, s.disp_offset) << "at +" << off << ": " << text_of(f);
    ASSERT_EQ(f.modrm_offset, s.modrm_offset) << "at +" << off << ": " << text_of(f);
    ASSERT_EQ(f.raw, s.raw) << "at +" << off;
    ASSERT_EQ(text_of(f), text_of(s)) << "at +" << off;
    // Instructions with a relative operand get decode()'s whole answer, registers too.
    if (f.rip_relative || f.is_relative_branch()) {
      EXPECT_EQ(f.gpr_mask, s.gpr_mask) << text_of(f);
      EXPECT_EQ(f.explicit_gpr_mask, s.explicit_gpr_mask) << text_of(f);
      relative++;
    }
    compared++;
    off += f.length;
  }
  std::printf("compared %zu instructions (%zu relative), %zu undecodable bytes\n", compared,
              relative, undecodable);
  EXPECT_GT(compared, 10000u);
  EXPECT_GT(relative, 1000u);
}

TEST(DecodeShape, RefusesLikeDecode) {
  const std::uint8_t truncated[] = {0x48, 0x8b};  // mov r64, r/m64 without its ModRM
  auto full = decode(truncated, 0x1000);
  auto shape = decode_shape(truncated, 0x1000);
  ASSERT_FALSE(full.ok());
  ASSERT_FALSE(shape.ok());
  EXPECT_EQ(full.error().code(), shape.error().code());
  EXPECT_EQ(full.error().message(), shape.error().message());
  EXPECT_FALSE(decode_shape({}, 0x1000).ok());
}

// remember_shapes(): decode_shape() answers from what was remembered only for the same
// bytes at the same address; other bytes there (code rewritten), or the same bytes
// elsewhere (a different rip-relative target), are decoded afresh.
TEST(DecodeShape, RememberedShapesAnswerOnlyForTheSameBytesAndAddress) {
  // lea rax, [rip+0x10]; jne +0x20 (rel8); push rbp
  const std::uint8_t code[] = {0x48, 0x8d, 0x05, 0x10, 0x00, 0x00, 0x00, 0x75, 0x20, 0x55};
  const std::uint64_t at = 0x7000'0000'1000;
  std::vector<Insn> insns;
  for (std::size_t off = 0; off < sizeof code;) {
    auto r = decode_shape(std::span<const std::uint8_t>(code + off, sizeof code - off), at + off);
    ASSERT_TRUE(r.ok());
    off += r->length;
    insns.push_back(*r);
  }
  ASSERT_EQ(insns.size(), 3u);
  remember_shapes(insns);
  for (const Insn& want : insns) {
    const std::size_t off = want.address - at;
    auto again =
        decode_shape(std::span<const std::uint8_t>(code + off, sizeof code - off), at + off);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->length, want.length);
    EXPECT_EQ(again->kind, want.kind);
    EXPECT_EQ(again->target, want.target);
    EXPECT_EQ(again->rip_relative, want.rip_relative);
    EXPECT_EQ(again->disp_offset, want.disp_offset);
    EXPECT_EQ(again->rel_offset, want.rel_offset);
    EXPECT_EQ(again->raw, want.raw);
  }
  // Other bytes at a remembered address: je instead of jne, ret instead of lea.
  const std::uint8_t je[] = {0x74, 0x20};
  auto other = decode_shape(je, at + 7);
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->raw[0], 0x74);
  EXPECT_EQ(other->target, at + 7 + 2 + 0x20);
  const std::uint8_t ret[] = {0xc3};
  auto r = decode_shape(ret, at);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kind, InsnKind::ret);
  EXPECT_EQ(r->length, 1);
  // The same lea elsewhere: its target moves with it.
  auto moved = decode_shape(std::span<const std::uint8_t>(code, 7), at + 0x100);
  ASSERT_TRUE(moved.ok());
  EXPECT_EQ(moved->target, at + 0x100 + 7 + 0x10);
  // Truncated bytes are still an error, even at a remembered address.
  EXPECT_FALSE(decode_shape(std::span<const std::uint8_t>(code + 7, 1), at + 7).ok());
}

}  // namespace
}  // namespace hp::arch

namespace hp::arch {
namespace {

// quick_shape() against decode() for every opcode of its list (and every other one, which
// it must leave to Zydis or get right), with no REX and several, every ModRM byte, SIB
// bytes with and without a base, and every truncation of what it accepts.
TEST(DecodeShape, QuickShapeAgreesWithDecodeOnEveryModRM) {
  const std::uint8_t rexes[] = {0x00, 0x40, 0x41, 0x44, 0x48, 0x49, 0x4c, 0x4f};
  const std::uint8_t sibs[] = {0x24, 0x25, 0x65, 0xe5, 0x00, 0xff};
  std::size_t quick = 0;
  for (std::uint8_t rex : rexes) {
    for (unsigned op = 0; op < 256; op++) {
      for (unsigned op2 = 0; op2 < (op == 0x0f ? 256u : 1u); op2++) {
        for (unsigned m = 0; m < 256; m++) {
          const bool has_sib = (m >> 6) != 3 && (m & 7) == 4;
          for (std::uint8_t sib : sibs) {
            if (!has_sib && sib != sibs[0]) continue;
            std::uint8_t b[15];
            std::size_t k = 0;
            if (rex) b[k++] = rex;
            b[k++] = static_cast<std::uint8_t>(op);
            if (op == 0x0f) b[k++] = static_cast<std::uint8_t>(op2);
            b[k++] = static_cast<std::uint8_t>(m);
            b[k++] = sib;
            for (; k < sizeof b; k++)
              b[k] = static_cast<std::uint8_t>(0x11 * k);
            Insn q;
            if (!detail::quick_shape(b, 0x5000, q)) continue;
            quick++;
            auto full = decode(b, 0x5000, /*with_text=*/false);
            ASSERT_TRUE(full.ok())
                << std::hex << "rex " << +rex << " op " << op << " " << op2 << " modrm " << m;
            ASSERT_EQ(q.length, full->length) << text_of(*full);
            ASSERT_EQ(q.kind, full->kind) << text_of(*full);
            ASSERT_EQ(q.modrm_offset, full->modrm_offset) << text_of(*full);
            ASSERT_FALSE(full->rip_relative) << text_of(*full);
            ASSERT_FALSE(full->is_relative_branch()) << text_of(*full);
            ASSERT_EQ(q.raw, full->raw) << text_of(*full);
            for (std::size_t cut = 0; cut < q.length; cut++) {
              Insn t;
              ASSERT_FALSE(detail::quick_shape(std::span<const std::uint8_t>(b, cut), 0x5000, t))
                  << text_of(*full) << " cut to " << cut;
            }
          }
        }
      }
    }
  }
  const std::uint8_t endbr64[] = {0xf3, 0x0f, 0x1e, 0xfa, 0x55};
  Insn q;
  ASSERT_TRUE(detail::quick_shape(endbr64, 0x5000, q));
  auto full = decode(endbr64, 0x5000, false);
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(q.length, full->length);
  EXPECT_EQ(q.kind, full->kind);
  EXPECT_EQ(q.modrm_offset, full->modrm_offset);
  EXPECT_GT(quick, 100000u);
}

}  // namespace
}  // namespace hp::arch
