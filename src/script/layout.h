// Arrays and structs as values (docs/design/script-runtime.md, "Arrays and structs as
// values"): a value of Type::record is a copy of a C object's bytes, at most kStrBytes,
// carried where strings are carried (a $variable's string slot, kStrWords words of a map
// key or value). Its ValueLayout, made from the script's C types when the script is
// lowered, is what the printers need to show it as bpftrace does: `[1,2,3]`,
// `{ .a = 1, .b = [2,3] }`, in JSON `[1,2,3]`, `{ "a": 1, "b": [2,3] }`.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "script/ctypes.h"
#include "script/program.h"

namespace hotprobe::script {

struct ValueLayout {
  // buffer: buf()'s value, [length][bytes] (ast::Record::buffer), printed as \xNN text.
  // raw_stack: ustack(raw) as a key part, [n, addresses...] (ast::Record::raw_stack).
  enum class Kind : std::uint8_t { integer, chars, array, record, buffer, raw_stack };
  Kind kind = Kind::integer;
  std::uint32_t size = 0;     // bytes
  bool is_signed = false;     // integer
  bool pointer = false;       // integer: a pointer (a map key shows it in hex)
  bool current_form = false;  // record: ast::Record::current_form (pointers in hex...)
  bool tuple = false;         // record: a tuple inside a tuple, printed (1, x)
  // array: `count` elements of `elem`; record: fields in order.
  std::uint32_t count = 0;
  std::shared_ptr<const ValueLayout> elem;
  struct Field {
    std::string name;
    std::uint32_t offset = 0;
    std::uint32_t bit_offset = 0;  // bit fields: within the unit at `offset`
    std::uint32_t bit_width = 0;
    std::shared_ptr<const ValueLayout> layout;
  };
  std::vector<Field> fields;
};

// The layout of C type `ctype` (an array, struct or union of the table): a char array
// (any array of 1-byte integers) is a string, as bpftrace prints it; a pointer an
// unsigned integer.
std::shared_ptr<const ValueLayout> make_layout(const ast::TypeTable& types, int ctype);

// `bytes` (layout.size of them) as bpftrace prints the value: text `[1,2]`,
// `{ .a = 1, .b = x }`; json `[1,2]`, `{ "a": 1, "b": "x" }`. `escape` (text): program
// strings as append_text_escaped writes them.
void append_layout_value(std::string& out, const ValueLayout& layout, std::string_view bytes,
                         OutputFormat fmt, bool escape = true);
// As a map key part shows it (bpftrace's map key form): `[1,2]`, `{.a=1,.b=x}`, pointers
// in hex.
// buf()'s text of a buffer's bytes (a ValueLayout::Kind::buffer value): printable ASCII
// as it is, every other byte as \xNN; at most `room` bytes of text, whole escapes only.
std::size_t buffer_text(std::string_view bytes, char* out, std::size_t room);
void append_layout_key(std::string& out, const ValueLayout& layout, std::string_view bytes,
                       bool escape);

}  // namespace hotprobe::script
