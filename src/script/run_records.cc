// The run pass's nodes for arrays and structs as values (run_nodes.h, script/layout.h):
// a copy lives in a kStrBytes buffer (a wide one, over kStrBytes, in record_span(size)
// bytes), its bytes then zeros, wherever it goes.
#include <algorithm>
#include <cstring>

#include "script/run_nodes.h"

namespace hotprobe::script {
namespace nodes {

std::uint32_t s_var_bytes(const Node* n, Frame& f, char* out) {
  std::memcpy(out, f.sslots[n->imm], kStrBytes);
  return n->bytes;
}

namespace {
// The offset of n's part in n->a's copy, and the copy in `buf` (kStrBytes, or for a wide
// copy, kWide, record_span of n->a->bytes); false when the part is not inside it (a
// variable index out of bounds).
template <bool kWide>
bool part_of(const Node* n, Frame& f, char* buf, std::uint64_t& at) {
  n->a->s(n->a, f, buf);
  at = u(n->imm) + (n->b ? u(n->b->i(n->b, f)) : 0);
  const std::uint64_t size = n->i ? n->key_words : n->bytes;
  const std::uint64_t width = kWide ? record_span(n->a->bytes) : kStrBytes;
  return at <= width && size <= width - at;
}

// The integer (or bit field) of n at `at` in a copy.
std::int64_t load_part(const Node* n, const char* at) {
  std::uint64_t v = 0;
  std::memcpy(&v, at, n->key_words);
  if (n->bit_width) {
    const unsigned w = n->bit_width;
    v >>= n->bit_offset;
    if (w < 64) v &= (std::uint64_t{1} << w) - 1;
    if (n->is_signed && w < 64 && (v >> (w - 1)) & 1) v |= ~std::uint64_t{0} << w;
    return s64(v);
  }
  switch (n->key_words) {
    case 1:
      return n->is_signed ? static_cast<std::int8_t>(v) : static_cast<std::int64_t>(v & 0xff);
    case 2:
      return n->is_signed ? static_cast<std::int16_t>(v) : static_cast<std::int64_t>(v & 0xffff);
    case 4:
      return n->is_signed ? static_cast<std::int32_t>(v)
                          : static_cast<std::int64_t>(v & 0xffffffffu);
    default:
      return s64(v);
  }
}

template <bool kWide>
std::int64_t rec_load(const Node* n, Frame& f) {
  char buf[kWide ? kMaxRecBytes : kStrBytes];
  std::uint64_t at = 0;
  if (!part_of<kWide>(n, f, buf, at)) return 0;
  return load_part(n, buf + at);
}
}  // namespace

std::uint32_t s_var_bytes_wide(const Node* n, Frame& f, char* out) {
  std::memcpy(out, f.sslots[n->imm], record_span(n->bytes));
  return n->bytes;
}

std::uint32_t s_rec_slice_wide(const Node* n, Frame& f, char* out) {
  char buf[kMaxRecBytes];
  std::uint64_t at = 0;
  std::memset(out, 0, record_span(n->bytes));
  if (part_of<true>(n, f, buf, at)) std::memcpy(out, buf + at, n->bytes);
  return n->bytes;
}

std::uint32_t s_rec_chars_wide(const Node* n, Frame& f, char* out) {
  char buf[kMaxRecBytes];
  std::uint64_t at = 0;
  const std::uint32_t len = std::min<std::uint32_t>(n->bytes, kStrReadBytes - 1);
  std::memset(out, 0, kStrBytes);
  if (part_of<true>(n, f, buf, at)) std::memcpy(out, buf + at, len);
  return static_cast<std::uint32_t>(strnlen(out, len));
}

std::int64_t i_rec_load_wide(const Node* n, Frame& f) {
  return rec_load<true>(n, f);
}

std::int64_t i_req_wide(const Node* n, Frame& f) {
  char x[kMaxRecBytes], y[kMaxRecBytes];
  n->a->s(n->a, f, x);
  n->b->s(n->b, f, y);
  return std::memcmp(x, y, record_span(n->a->bytes)) == 0;
}
std::int64_t i_rne_wide(const Node* n, Frame& f) {
  return !i_req_wide(n, f);
}

std::int64_t i_print_wide(const Node* n, Frame& f) {
  char buf[kMaxRecBytes];
  FmtArg v;
  v.s = std::string_view(buf, n->a->s(n->a, f, buf));
  v.is_string = true;
  v.layout = n->layouts.empty() ? nullptr : n->layouts[0];
  thread_local std::string& out = *new std::string;  // never destroyed: hits run in exit()
  out.clear();
  append_value(out, v, f.rt->format);
  f.rt->write(out);
  return 0;
}

std::uint32_t s_rec_slice(const Node* n, Frame& f, char* out) {
  char buf[kStrBytes];
  std::uint64_t at = 0;
  std::memset(out, 0, kStrBytes);
  if (part_of<false>(n, f, buf, at)) std::memcpy(out, buf + at, n->bytes);
  return n->bytes;
}

std::uint32_t s_rec_chars(const Node* n, Frame& f, char* out) {
  s_rec_slice(n, f, out);
  out[std::min<std::uint32_t>(n->bytes, kStrReadBytes - 1)] = '\0';
  return static_cast<std::uint32_t>(strnlen(out, kStrBytes));
}

std::int64_t i_rec_load(const Node* n, Frame& f) {
  return rec_load<false>(n, f);
}

std::int64_t i_index_oob(const Node* n, Frame& f) {
  const std::int64_t i = n->a->i(n->a, f);
  // bpftrace's text warning goes to stderr, its JSON object with the output.
  if (u(i) > u(n->imm) && f.rt->sink) [[unlikely]] {
    if (f.rt->format == OutputFormat::json) {
      f.rt->sink->write(n->text);
    } else {
      f.rt->sink->request(Sink::Request::warning, n->text);
    }
  }
  return i;
}

std::uint32_t s_buf_bytes(const Node* n, Frame& f, char* out) {
  const std::uint64_t p = u(n->a->i(n->a, f));
  const std::uint32_t len = n->bytes - 1;
  std::memset(out, 0, kStrBytes);
  out[0] = static_cast<char>(len);
  if (len && !read_user(p, out + 1, len)) [[unlikely]]
    f.rt->read_faults.fetch_add(1, std::memory_order_relaxed);
  return n->bytes;
}

std::uint32_t s_buf_str(const Node* n, Frame& f, char* out) {
  char s[kStrBytes];
  const std::uint32_t have = n->a->s(n->a, f, s);
  const std::uint32_t len = n->bytes - 1;
  std::memset(out, 0, kStrBytes);
  out[0] = static_cast<char>(len);
  std::memcpy(out + 1, s, std::min(have, len));  // the string, then zeros (its NUL)
  return n->bytes;
}

std::uint32_t s_pack(const Node* n, Frame& f, char* out) {
  std::memset(out, 0, kStrBytes);
  for (const Node* p : n->keys) {
    if (p->a->s) {
      char part[kStrBytes];
      p->a->s(p->a, f, part);
      std::memcpy(out + p->imm, part, p->bytes);
    } else {
      const std::int64_t v = p->a->i(p->a, f);
      std::memcpy(out + p->imm, &v, p->key_words);
    }
  }
  return n->bytes;
}

std::int64_t i_req(const Node* n, Frame& f) {
  char x[kStrBytes], y[kStrBytes];
  n->a->s(n->a, f, x);
  n->b->s(n->b, f, y);
  return std::memcmp(x, y, kStrBytes) == 0;
}
std::int64_t i_rne(const Node* n, Frame& f) {
  return !i_req(n, f);
}

}  // namespace nodes
}  // namespace hotprobe::script
