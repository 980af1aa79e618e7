// ElfFile::cfi_extent: a function's extent from .eh_frame_hdr and its FDE.
#include <cstring>

#include "elf/elf_file.h"

namespace hp::elf {

namespace {

// DWARF pointer encodings (DW_EH_PE_*) as .eh_frame and .eh_frame_hdr use them.
constexpr std::uint8_t kPeOmit = 0xff;
constexpr std::uint8_t kPePcrel = 0x10, kPeDatarel = 0x30;

bool read_uleb(const std::uint8_t*& p, const std::uint8_t* end, std::uint64_t& out) {
  out = 0;
  for (unsigned shift = 0; p < end && shift < 64; shift += 7) {
    const std::uint8_t b = *p++;
    out |= static_cast<std::uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}

// Reads one encoded pointer at `p` (whose link-time address is `at`); `data_base` is
// what DW_EH_PE_datarel is relative to. False for an encoding this reader does not know.
bool read_encoded(const std::uint8_t*& p, const std::uint8_t* end, std::uint8_t enc,
                  std::uint64_t at, std::uint64_t data_base, std::uint64_t& out) {
  if (enc == kPeOmit) return false;
  std::uint64_t v = 0;
  std::size_t n = 0;
  bool sign = false;
  switch (enc & 0x0f) {
    case 0x00:  // absptr
    case 0x04:  // udata8
    case 0x0c:  // sdata8
      n = 8;
      break;
    case 0x02:  // udata2
      n = 2;
      break;
    case 0x0a:  // sdata2
      n = 2, sign = true;
      break;
    case 0x03:  // udata4
      n = 4;
      break;
    case 0x0b:  // sdata4
      n = 4, sign = true;
      break;
    case 0x01:  // uleb128
      if (!read_uleb(p, end, v)) return false;
      break;
    default:
      return false;
  }
  if (n) {
    if (static_cast<std::size_t>(end - p) < n) return false;
    for (std::size_t i = 0; i < n; ++i)
      v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
    if (sign && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~std::uint64_t{0} << (8 * n);
    p += n;
  }
  switch (enc & 0x70) {
    case 0x00:
      break;
    case kPePcrel:
      v += at;
      break;
    case kPeDatarel:
      v += data_base;
      break;
    default:
      return false;
  }
  out = v;
  return true;
}

}  // namespace

std::optional<ElfFile::Extent> ElfFile::cfi_extent(std::uint64_t offset) const {
  const Segment& h = eh_frame_hdr_;
  if (h.filesz < 12 || h.filesz > (std::uint64_t{64} << 20)) return std::nullopt;
  auto vaddr = offset_to_vaddr(offset);
  if (!vaddr.ok()) return std::nullopt;
  auto hdr = read_bytes(h.offset, h.filesz);
  if (!hdr.ok()) return std::nullopt;
  const std::uint8_t* p = hdr->data();
  const std::uint8_t* end = p + hdr->size();
  const auto at = [&](const std::uint8_t* q) { return h.vaddr + (q - hdr->data()); };
  if (p[0] != 1) return std::nullopt;  // version
  const std::uint8_t ptr_enc = p[1], count_enc = p[2], table_enc = p[3];
  p += 4;
  std::uint64_t ignored = 0, count = 0;
  if (!read_encoded(p, end, ptr_enc, at(p), h.vaddr, ignored)) return std::nullopt;
  if (!read_encoded(p, end, count_enc, at(p), h.vaddr, count)) return std::nullopt;
  // The table linkers write: (initial location, FDE address) pairs of 4-byte signed
  // offsets from the header, sorted by location.
  if (table_enc != (kPeDatarel | 0x0b)) return std::nullopt;
  if (count == 0 || count > static_cast<std::uint64_t>(end - p) / 8) return std::nullopt;
  const auto entry = [&](std::uint64_t i, int field) {
    std::int32_t v;
    std::memcpy(&v, p + 8 * i + 4 * field, 4);
    return h.vaddr + static_cast<std::uint64_t>(static_cast<std::int64_t>(v));
  };
  // The last entry whose location is <= vaddr.
  std::uint64_t lo = 0, hi = count;
  while (lo < hi) {
    const std::uint64_t mid = lo + (hi - lo) / 2;
    if (entry(mid, 0) <= *vaddr) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  if (lo == 0) return std::nullopt;
  const std::uint64_t fde_vaddr = entry(lo - 1, 1);

  // Reads a CFI record (FDE or CIE) at a link-time address: its bytes after the length.
  const auto record = [&](std::uint64_t rec_vaddr,
                          std::uint64_t& body_vaddr) -> std::optional<std::vector<std::uint8_t>> {
    auto off = vaddr_to_offset(rec_vaddr);
    if (!off.ok()) return std::nullopt;
    auto len_bytes = read_bytes(*off, 4);
    if (!len_bytes.ok()) return std::nullopt;
    std::uint32_t len = 0;
    std::memcpy(&len, len_bytes->data(), 4);
    if (len == 0 || len >= 0xfffffff0u || len > 4096) return std::nullopt;  // 64-bit DWARF: none
    body_vaddr = rec_vaddr + 4;
    auto body = read_bytes(*off + 4, len);
    if (!body.ok()) return std::nullopt;
    return std::move(*body);
  };
  std::uint64_t fde_body = 0;
  auto fde = record(fde_vaddr, fde_body);
  if (!fde || fde->size() < 4) return std::nullopt;
  std::uint32_t cie_ptr = 0;
  std::memcpy(&cie_ptr, fde->data(), 4);
  if (cie_ptr == 0 || cie_ptr > fde_body) return std::nullopt;  // a CIE, not an FDE
  std::uint64_t cie_body = 0;
  auto cie = record(fde_body - cie_ptr, cie_body);
  if (!cie || cie->size() < 6) return std::nullopt;
  // The CIE's augmentation names the encoding of the FDE's addresses ('R').
  const std::uint8_t* c = cie->data() + 4;  // after the CIE id
  const std::uint8_t* cend = cie->data() + cie->size();
  const std::uint8_t version = *c++;
  const auto* aug = c;
  while (c < cend && *c)
    ++c;
  if (c == cend) return std::nullopt;
  const std::string_view augmentation(reinterpret_cast<const char*>(aug), c - aug);
  ++c;
  std::uint64_t skip = 0;
  if (!read_uleb(c, cend, skip) || !read_uleb(c, cend, skip)) return std::nullopt;  // alignments
  if (version == 1) {
    if (c == cend) return std::nullopt;
    ++c;  // return address register
  } else if (!read_uleb(c, cend, skip)) {
    return std::nullopt;
  }
  std::uint8_t fde_enc = 0;  // absptr
  if (!augmentation.empty() && augmentation[0] == 'z') {
    if (!read_uleb(c, cend, skip)) return std::nullopt;  // augmentation data length
    for (char a : augmentation.substr(1)) {
      if (c >= cend) return std::nullopt;
      if (a == 'R') {
        fde_enc = *c++;
      } else if (a == 'L') {
        ++c;
      } else if (a == 'P') {
        const std::uint8_t penc = *c++;
        std::uint64_t personality = 0;
        if (!read_encoded(c, cend, penc & 0x7f, 0, 0, personality)) return std::nullopt;
      } else if (a != 'S' && a != 'B') {
        return std::nullopt;
      }
    }
  } else if (!augmentation.empty()) {
    return std::nullopt;
  }
  const std::uint8_t* q = fde->data() + 4;
  const std::uint8_t* qend = fde->data() + fde->size();
  std::uint64_t begin = 0, range = 0;
  if (!read_encoded(q, qend, fde_enc, fde_body + 4, h.vaddr, begin)) return std::nullopt;
  if (!read_encoded(q, qend, fde_enc & 0x0f, 0, 0, range)) return std::nullopt;
  if (*vaddr < begin || *vaddr - begin >= range) return std::nullopt;  // in a gap
  auto start = vaddr_to_offset(begin);
  if (!start.ok() || !offset_is_code(*start)) return std::nullopt;
  return Extent{*start, range};
}

}  // namespace hp::elf
