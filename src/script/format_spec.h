// One piece of a printf format, from the checker (parse_format) to the printer
// (format_printf): literal text, then (unless conversion == 0) one conversion. "%%" is
// folded into `text` as a single '%'. printf's conversions are passed as bpftrace 0.17
// passes them to the C library: no length modifier is a 32-bit int, h 16-bit, hh 8-bit,
// l/ll/j/z/t 64-bit; %p is a pointer ("(nil)" for 0).
#pragma once

#include <cstdint>
#include <string>

namespace hotprobe::script {

struct FormatSpec {
  enum class Length : std::uint8_t { none, hh, h, l, ll, j, z, t };  // ordered by width
  std::string text;     // literal text before the conversion (escapes already decoded)
  char conversion = 0;  // 'd' 'i' 'u' 'x' 'X' 'o' 'p' 's' 'c', or 0 for trailing text only
  bool left = false;    // '-'
  bool plus = false;    // '+'
  bool space = false;   // ' '
  bool alt = false;     // '#'
  bool zero = false;    // '0'
  int width = -1;       // -1: none
  int precision = -1;   // -1: none
  Length length = Length::none;
  int arg = -1;  // index of the argument in the call's args (1-based: args[0] is the format)
};

}  // namespace hotprobe::script
