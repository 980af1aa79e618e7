// The printers: bpftrace 0.17's text layout and its `-f json` objects, byte for byte.
//
//   std::string s;
//   append_map(s, desc, rows, OutputFormat::text);   // "@x[1]: 5\n" ...
//   append_printf(s, pieces, args, OutputFormat::json);  // {"type": "printf", ...}
//
// Formats checked against bpftrace v0.17.0 on this machine (tests/script/output_test.cc
// holds the goldens). Sorting follows bpftrace: count/sum/integer/min/max maps by value
// ascending, avg/stats by average, hist/lhist by total count, string maps by key; ties
// (bpftrace leaves them in its hash order) by key ascending.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "script/format_spec.h"
#include "script/maps.h"
#include "script/program.h"

namespace hotprobe::script {

// Sorts `rows` as bpftrace prints them.
void sort_rows(const MapDesc& desc, std::vector<Row>& rows);

// A whole map (print(@m) and the end-of-run dump). `top`: only the last `top` rows (0: all);
// `div`: values divided by it (count/sum/integer/min/max/avg; 0 or 1: none).
void append_map(std::string& out, const MapDesc& desc, std::vector<Row> rows, OutputFormat fmt,
                std::uint32_t top = 0, std::uint32_t div = 0);

// hist()/lhist() bodies (the bar lines), exposed for tests.
std::string hist_text(std::span<const std::uint64_t> buckets);
std::string lhist_text(std::span<const std::uint64_t> buckets, std::int64_t min, std::int64_t max,
                       std::int64_t step);
std::string hist_label(int power);      // 1, 2, ... 512, 1K ... 1M ... 1G ... 1T
std::string lhist_label(std::int64_t);  // 0, 1K, 3M, 17

// Strings from the traced program are data. In text output their terminal controls (C0
// but tab and newline, DEL, C1) and the bytes that are not valid UTF-8 are written as
// \xNN, so a program string cannot move the cursor, retitle the terminal or hide a line
// with \r; the script's own format text is written as it is.
void append_text_escaped(std::string& out, std::string_view s);
std::size_t text_escaped_size(std::string_view s);  // what append_text_escaped appends

// A JSON string's body: always valid UTF-8 (each invalid byte becomes U+FFFD), controls,
// DEL and C1 as \u00XX.
void json_escape(std::string& out, std::string_view s);

struct ValueLayout;

// One argument of printf: an integer or a string; or, with a layout, an array or struct
// copied whole (`s` holds its bytes; script/layout.h).
struct FmtArg {
  std::int64_t i = 0;
  std::string_view s;
  bool is_string = false;
  const ValueLayout* layout = nullptr;
};

// Appends the formatted text (no JSON wrapping). Never allocates when `out` has capacity.
// `escape` (text output): %s and %c arguments as append_text_escaped writes them.
void format_printf(std::string& out, std::span<const FormatSpec> spec, std::span<const FmtArg> args,
                   bool escape = false);
// Wraps text as bpftrace does for an event of `type` ("printf", "time"): text unchanged,
// json {"type": "TYPE", "data": "ESCAPED"}\n.
void append_message(std::string& out, std::string_view type, std::string_view text,
                    OutputFormat fmt);
// print(value): text "VALUE\n"; json {"type": "value", "data": VALUE}\n.
void append_value(std::string& out, const FmtArg& v, OutputFormat fmt);
// print(tuple): text "(1, x)\n"; json {"type": "value", "data": [1,"x"]}\n, as bpftrace.
void append_tuple(std::string& out, std::span<const FmtArg> elems, OutputFormat fmt);

// ustack and usym values (script/run_stack.h) are named where output is printed. By
// default the printers name them as they format (hotprobe's own prints, tests). With
// set_symbols_deferred(true) (the agent: its output thread is the reader) they leave each
// value's marker in the text, and expand_symbols() on the reader's side, in the same
// process, replaces each marker of this process by its text (JSON-escaped where the
// marker was, inside a JSON string): the probed thread then never symbolizes.
void set_symbols_deferred(bool on);
void expand_symbols(std::string& text);
// Whether `text` may hold a marker (expand_symbols has work): a reader that has none to
// name copies nothing.
bool has_symbol_markers(std::string_view text);

}  // namespace hotprobe::script
