#include "script/output.h"

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <mutex>
#include <optional>
#include <utility>

#include "script/ast.h"
#include "script/layout.h"
#include "script/run_stack.h"
#include "script/symbolize.h"

namespace hotprobe::script {

namespace {

std::int64_t as_signed(std::uint64_t v) {
  return static_cast<std::int64_t>(v);
}

// The value bpftrace sorts a row by.
std::int64_t sort_value(const MapDesc& d, const Row& r) {
  switch (d.kind) {
    case ValueKind::avg:
    case ValueKind::stats:
      return r.value[0] ? as_signed(r.value[1]) / as_signed(r.value[0]) : 0;
    case ValueKind::hist:
    case ValueKind::lhist: {
      std::int64_t sum = 0;
      for (std::uint64_t b : r.value)
        sum += as_signed(b);
      return sum;
    }
    default:
      return as_signed(r.value[0]);
  }
}

bool key_less(const MapDesc& d, const Row& a, const Row& b) {
  std::size_t w = 0;
  for (std::size_t k = 0; k < d.key_is_string.size(); ++k) {
    if (d.part(k) == KeyPart::string) {
      const int c = get_string(&a.key[w]).compare(get_string(&b.key[w]));
      if (c != 0) return c < 0;
    } else {
      for (std::uint32_t i = 0; i < d.part_words(k); ++i)
        if (a.key[w + i] != b.key[w + i]) return a.key[w + i] < b.key[w + i];  // as uint64
    }
    w += d.part_words(k);
  }
  return false;
}

// "@FILE:LINE\n" of a source place, "\n" when it names no file.
std::string source_suffix(const Symbolizer::SourcePlace& p) {
  if (p.file.empty()) return "\n";
  return "@" + p.file + ":" + std::to_string(p.line) + "\n";
}

// Frames ([n, addresses...]) as bpftrace prints a stack: a newline, then one frame a line,
// "INDENTmain+52" (a map key indents 4, a value 8), perf "\t55d0c0a1b2c3 main+52 (PATH)",
// raw "55d0c0a1b2c3", build_id "BUILDID 0xFILEOFFSET" (raw where the module has none).
void frames_text(std::string& s, const std::uint64_t* part, SymbolForm form, std::size_t indent,
                 Symbolizer& sym, bool request_places = false) {
  const std::uint64_t n = std::min<std::uint64_t>(part[0], kMaxStackFrames);
  s += "\n";
  for (std::uint64_t i = 1; i <= n; ++i) {
    char addr[24];
    std::string id;
    std::uint64_t off = 0;
    if (form == SymbolForm::stack_build_id && sym.file_place(part[i], id, off)) {
      std::snprintf(addr, sizeof addr, " 0x%02" PRIx64 "\n", off);
      s += id + addr;
      continue;
    }
    if (form == SymbolForm::stack_raw || form == SymbolForm::stack_build_id) {
      std::snprintf(addr, sizeof addr, "%" PRIx64 "\n", part[i]);
      s += addr;
      continue;
    }
    const Symbolizer::Name name = sym.name(part[i]);
    // show_debug_info: the functions inlined at the address first (innermost first), then
    // the frame with its source place, as bpftrace main prints them; perf mode names the
    // inlined functions and leaves the places out.
    const std::vector<Symbolizer::SourcePlace>* places = nullptr;
    if (request_places && show_debug_info() && !name.symbol.empty() &&
        name.module.find_first_of("\x1c\x1d\n") == std::string::npos) {
      // The command names the places (symbolize.h, kPlaceRequest).
      char req[48];
      if (form == SymbolForm::stack_perf) {
        std::snprintf(req, sizeof req, "%c%" PRIx64 "%cp%" PRIx64 "%c", kPlaceField,
                      name.file_offset, kPlaceField, part[i], kPlaceRequest);
      } else {
        std::snprintf(req, sizeof req, "%c%" PRIx64 "%cs%zu%c", kPlaceField, name.file_offset,
                      kPlaceField, indent, kPlaceRequest);
      }
      s += kPlaceRequest;
      s += name.module;
      s += req;
    } else if (show_debug_info() && !name.symbol.empty() &&
               !(places = &sym.source(part[i]))->empty()) {
      for (std::size_t k = 0; k + 1 < places->size(); ++k) {
        const Symbolizer::SourcePlace& p = (*places)[k];
        if (form == SymbolForm::stack_perf) {
          std::snprintf(addr, sizeof addr, "\t%" PRIx64 " ", part[i]);
          s += addr + p.function + " (inlined)\n";
        } else {
          s.append(indent, ' ');
          s += "[inlined] " + p.function + source_suffix(p);
        }
      }
    }
    if (form == SymbolForm::stack_perf) {
      std::snprintf(addr, sizeof addr, "\t%" PRIx64 " ", part[i]);
      s += addr;
      s += frame_text(name, part[i]);
      s += " (" + (name.module.empty() ? std::string("[unknown]") : name.module) + ")\n";
    } else {
      s.append(indent, ' ');
      s += frame_text(name, part[i]);
      s += places && !places->empty() ? source_suffix(places->back()) : std::string("\n");
    }
  }
}

// A ustack key part ([frames, addresses...]) as bpftrace prints a stack in a map key.
void stack_text(std::string& s, const std::uint64_t* part, KeyPart mode, Symbolizer& sym) {
  frames_text(s, part, mode == KeyPart::ustack_perf ? SymbolForm::stack_perf : SymbolForm::stack, 4,
              sym);
}

// usym: the symbol without its offset, or the address in hex (bpftrace).
void symbol_text(std::string& s, std::uint64_t addr, Symbolizer& sym) {
  const Symbolizer::Name name = sym.name(addr);
  s += name.symbol.empty() ? frame_text(name, addr) : name.symbol;
}

std::atomic<bool> g_deferred{false};  // set_symbols_deferred

std::int64_t monotonic_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec;
}

// The text of a ustack or usym value's marker (run_stack.h) into `out`; false when `s` is
// not a marker of this process (then it is a string like any other). Names come from one
// module list kept for the process, read again (at most once a second) when a frame falls
// in no module of it: a library loaded since.
// `request_places`: the agent's reader writing text output (symbolize.h, kPlaceRequest).
bool symbolic_text(std::string& out, std::string_view s, bool right_away = false,
                   bool request_places = false) {
  if (s.empty() || s.front() != kSymbolMarker) return false;
  std::uint64_t words[1 + kMaxStackFrames];
  SymbolForm form{};
  if (!read_marker(s, form, words, std::size(words))) return false;
  if (!right_away && g_deferred.load(std::memory_order_relaxed)) {  // the reader names it
    out += s;
    return true;
  }
  static std::mutex mu;
  static Symbolizer* names = nullptr;  // never freed: printing may run in exit()
  static std::int64_t read_at = 0;
  std::scoped_lock lock(mu);
  const std::int64_t now = monotonic_seconds();
  if (!names) {
    names = new Symbolizer(Symbolizer::current());
    read_at = now;
  } else if (now > read_at) {
    for (std::uint64_t i = 1; i <= words[0] && form != SymbolForm::stack_raw; ++i) {
      if (names->name(words[i]).module.empty()) {
        *names = Symbolizer::current();
        read_at = now;
        break;
      }
    }
  }
  if (form == SymbolForm::symbol) {
    symbol_text(out, words[1], *names);
  } else {
    frames_text(out, words, form, 8, *names, request_places && places_by_reader());
  }
  return true;
}

// `escape`: program strings shown as text output shows them (append_text_escaped).
// `sym`: names the ustack and usym parts (the caller makes it when d.has_symbols()).
std::string key_text(const MapDesc& d, const Row& r, const char* sep, bool escape,
                     Symbolizer* sym) {
  std::string s;
  std::size_t w = 0;
  for (std::size_t k = 0; k < d.key_is_string.size(); ++k) {
    if (k) s += sep;
    switch (d.part(k)) {
      case KeyPart::string:
        if (std::string named; symbolic_text(named, get_string(&r.key[w]))) {
          s += named;  // a stack or symbol value as a key (`@[$s]` of `$s = ustack`)
        } else if (escape) {
          append_text_escaped(s, get_string(&r.key[w]));
        } else {
          s += get_string(&r.key[w]);
        }
        break;
      case KeyPart::ustack:
      case KeyPart::ustack_perf:
        stack_text(s, &r.key[w], d.part(k), *sym);
        break;
      case KeyPart::usym:
        symbol_text(s, r.key[w], *sym);
        break;
      case KeyPart::integer:
        s += std::to_string(as_signed(r.key[w]));
        break;
      case KeyPart::record:
        append_layout_key(s, *d.key_layouts[k], get_bytes(&r.key[w]), escape);
        break;
    }
    w += d.part_words(k);
  }
  return s;
}

// The first and last buckets that hold a count; (-1, -1) when none does.
std::pair<int, int> nonzero_buckets(std::span<const std::uint64_t> v) {
  int lo = -1, hi = -1;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (v[i] > 0) {
      if (lo < 0) lo = static_cast<int>(i);
      hi = static_cast<int>(i);
    }
  }
  return {lo, hi};
}

std::string hist_json(std::span<const std::uint64_t> v) {
  const auto [lo, hi] = nonzero_buckets(v);
  if (hi < 0) return "";
  std::string s = "[";
  for (int i = lo; i <= hi; ++i) {
    if (i > lo) s += ", ";
    s += "{";
    if (i == 0) {
      s += "\"max\": -1, ";
    } else if (i == 1) {
      s += "\"min\": 0, \"max\": 0, ";
    } else if (i == 2) {
      s += "\"min\": 1, \"max\": 1, ";
    } else {
      const std::uint64_t low = 1ull << (i - 2);
      const std::uint64_t high = (low << 1) - 1;
      s += "\"min\": " + std::to_string(low) + ", \"max\": " + std::to_string(high) + ", ";
    }
    s += "\"count\": " + std::to_string(v[i]) + "}";
  }
  return s + "]";
}

std::string lhist_json(std::span<const std::uint64_t> v, std::int64_t min, std::int64_t max,
                       std::int64_t step) {
  const auto [lo, hi] = nonzero_buckets(v);
  if (hi < 0) return "";
  const int buckets = static_cast<int>(v.size()) - 2;
  std::string s = "[";
  for (int i = lo; i <= hi; ++i) {
    if (i > lo) s += ", ";
    s += "{";
    if (i == 0) {
      s += "\"max\": " + std::to_string(min - 1) + ", ";
    } else if (i == buckets + 1) {
      s += "\"min\": " + std::to_string(max) + ", ";
    } else {
      s += "\"min\": " + std::to_string((i - 1) * step + min) +
           ", \"max\": " + std::to_string(i * step + min - 1) + ", ";
    }
    s += "\"count\": " + std::to_string(v[i]) + "}";
  }
  return s + "]";
}

void append_bar_line(std::string& s, const std::string& header, std::uint64_t value,
                     std::uint64_t max_value) {
  constexpr int kWidth = 52;
  const int bar = static_cast<int>(static_cast<float>(value) / static_cast<float>(max_value) *
                                   static_cast<float>(kWidth));
  char line[160];
  std::snprintf(line, sizeof line, "%-16s%8" PRIu64 " |%s%*s|\n", header.c_str(), value,
                std::string(static_cast<std::size_t>(bar), '@').c_str(), kWidth - bar, "");
  s += line;
}

}  // namespace

void sort_rows(const MapDesc& d, std::vector<Row>& rows) {
  if (d.kind == ValueKind::string || d.kind == ValueKind::tuple || d.kind == ValueKind::record) {
    std::sort(rows.begin(), rows.end(),
              [&](const Row& a, const Row& b) { return key_less(d, a, b); });
    return;
  }
  std::sort(rows.begin(), rows.end(), [&](const Row& a, const Row& b) {
    const std::int64_t va = sort_value(d, a), vb = sort_value(d, b);
    if (va != vb) return va < vb;
    return key_less(d, a, b);
  });
}

std::string hist_label(int power) {
  char suffix = 0;
  if (power >= 40) {
    suffix = 'T';
    power -= 40;
  } else if (power >= 30) {
    suffix = 'G';
    power -= 30;
  } else if (power >= 20) {
    suffix = 'M';
    power -= 20;
  } else if (power >= 10) {
    suffix = 'K';
    power -= 10;
  }
  std::string s = std::to_string(1ull << power);
  if (suffix) s += suffix;
  return s;
}

std::string lhist_label(std::int64_t n) {
  constexpr std::int64_t kilo = 1024, mega = 1048576;
  if (n == 0) return "0";
  if (n % mega == 0) return std::to_string(n / mega) + "M";
  if (n % kilo == 0) return std::to_string(n / kilo) + "K";
  return std::to_string(n);
}

// The buckets bpftrace prints: from the first non-empty one to the last, and the largest
// count (the bars' scale). hi < 0: all empty.
struct BucketRange {
  int lo = -1, hi = -1;
  std::uint64_t max_value = 0;
};
BucketRange non_empty_range(std::span<const std::uint64_t> v) {
  BucketRange r;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (v[i] > 0) {
      if (r.lo < 0) r.lo = static_cast<int>(i);
      r.hi = static_cast<int>(i);
    }
    r.max_value = std::max(r.max_value, v[i]);
  }
  return r;
}

std::string hist_text(std::span<const std::uint64_t> v) {
  const auto [lo, hi, max_value] = non_empty_range(v);
  if (hi < 0) return "";
  std::string s;
  for (int i = lo; i <= hi; ++i) {
    std::string header;
    if (i == 0) {
      header = "(..., 0)";
    } else if (i == 1) {
      header = "[0]";
    } else if (i == 2) {
      header = "[1]";
    } else {
      header = "[" + hist_label(i - 2) + ", " + hist_label(i - 1) + ")";
    }
    append_bar_line(s, header, v[i], max_value);
  }
  return s;
}

std::string lhist_text(std::span<const std::uint64_t> v, std::int64_t min, std::int64_t max,
                       std::int64_t step) {
  const auto [lo, hi, max_value] = non_empty_range(v);
  if (hi < 0) return "";
  const int buckets = static_cast<int>(v.size()) - 2;
  std::string s;
  for (int i = lo; i <= hi; ++i) {
    std::string header;
    if (i == 0) {
      header = "(..., " + lhist_label(min) + ")";
    } else if (i == buckets + 1) {
      header = "[" + lhist_label(max) + ", ...)";
    } else {
      header = "[" + lhist_label((i - 1) * step + min) + ", " + lhist_label(i * step + min) + ")";
    }
    append_bar_line(s, header, v[i], max_value);
  }
  return s;
}

namespace {

// The length of the valid UTF-8 sequence at s[i] and its code point; 0 when the bytes there
// are not one (a lone continuation byte, a truncated sequence, an overlong form, a
// surrogate, a code point past U+10FFFF).
std::size_t utf8_at(std::string_view s, std::size_t i, char32_t& cp) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  std::size_t n;
  char32_t min;
  if (c < 0x80) {
    cp = c;
    return 1;
  } else if ((c & 0xe0) == 0xc0) {
    n = 2, cp = c & 0x1f, min = 0x80;
  } else if ((c & 0xf0) == 0xe0) {
    n = 3, cp = c & 0x0f, min = 0x800;
  } else if ((c & 0xf8) == 0xf0) {
    n = 4, cp = c & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    if ((b(k) & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (b(k) & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

// What a terminal may act on: C0 controls but tab and newline, DEL, the C1 controls.
bool is_terminal_control(char32_t cp) {
  return (cp < 0x20 && cp != '\t' && cp != '\n') || (cp >= 0x7f && cp <= 0x9f);
}

// Walks `s` as text output shows it: `raw(piece)` for what passes unchanged, `byte(b)` for
// each byte written as \xNN.
template <class Raw, class Byte>
void walk_text_escaped(std::string_view s, Raw raw, Byte byte) {
  std::size_t start = 0, i = 0;
  while (i < s.size()) {
    char32_t cp;
    const std::size_t n = utf8_at(s, i, cp);
    if (n != 0 && !is_terminal_control(cp)) {
      i += n;
      continue;
    }
    if (i > start) raw(s.substr(start, i - start));
    const std::size_t bad = n == 0 ? 1 : n;  // an invalid byte alone, a control whole
    for (std::size_t k = 0; k < bad; ++k)
      byte(static_cast<unsigned char>(s[i + k]));
    i += bad;
    start = i;
  }
  if (i > start) raw(s.substr(start, i - start));
}

}  // namespace

std::size_t text_escaped_size(std::string_view s) {
  std::size_t n = 0;
  walk_text_escaped(
      s, [&](std::string_view piece) { n += piece.size(); }, [&](unsigned char) { n += 4; });
  return n;
}

void append_text_escaped(std::string& out, std::string_view s) {
  walk_text_escaped(
      s, [&](std::string_view piece) { out.append(piece); },
      [&](unsigned char b) {
        static constexpr char kHex[] = "0123456789abcdef";
        const char e[4] = {'\\', 'x', kHex[b >> 4], kHex[b & 15]};
        out.append(e, 4);
      });
}

void json_escape(std::string& out, std::string_view str) {
  std::size_t i = 0;
  while (i < str.size()) {
    char32_t cp;
    const std::size_t n = utf8_at(str, i, cp);
    if (n == 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD for each byte that is not valid UTF-8
      ++i;
      continue;
    }
    if (is_terminal_control(cp) && cp >= 0x7f) {  // DEL and C1: legal, but escaped too
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(cp));
      out += buf;
      i += n;
      continue;
    }
    if (n > 1) {
      out.append(str.substr(i, n));
      i += n;
      continue;
    }
    const char c = str[i++];
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
}

void append_map(std::string& out, const MapDesc& d, std::vector<Row> rows, OutputFormat fmt,
                std::uint32_t top, std::uint32_t div) {
  const bool json = fmt == OutputFormat::json;
  // bpftrace 0.17 prints a count() map without keys that holds nothing (never hit, or
  // cleared) as 0, in text and json; other empty maps are a blank line (json: nothing).
  if (rows.empty() && d.kind == ValueKind::count && d.key_is_string.empty())
    rows.push_back(Row{{}, {0}});
  if (json && rows.empty()) return;
  if (div == 0) div = 1;
  sort_rows(d, rows);
  if (top && rows.size() > top) rows.erase(rows.begin(), rows.end() - top);
  const bool keyed = !d.key_is_string.empty();
  const bool is_hist = d.kind == ValueKind::hist || d.kind == ValueKind::lhist;
  const bool is_stats = d.kind == ValueKind::avg || d.kind == ValueKind::stats;
  std::optional<Symbolizer> sym;  // made once for the whole map, only when it names code
  if (d.has_symbols() && !rows.empty()) sym.emplace(Symbolizer::current());
  Symbolizer* names = sym ? &*sym : nullptr;

  auto value_str = [&](const Row& r) -> std::string {
    const std::int64_t sdiv = static_cast<std::int64_t>(div);
    switch (d.kind) {
      case ValueKind::count:
        return std::to_string(r.value[0] / div);
      case ValueKind::sum:
      case ValueKind::integer:
      case ValueKind::min:
      case ValueKind::max:
        return std::to_string(as_signed(r.value[0]) / sdiv);
      case ValueKind::avg:
      case ValueKind::stats: {
        const std::int64_t count = as_signed(r.value[0]), total = as_signed(r.value[1]);
        const std::int64_t avg = count ? total / count : 0;
        if (d.kind == ValueKind::avg) return std::to_string(avg / sdiv);
        if (json) {
          return "{\"count\": " + std::to_string(count) + ", \"average\": " + std::to_string(avg) +
                 ", \"total\": " + std::to_string(total) + "}";
        }
        return "count " + std::to_string(count) + ", average " + std::to_string(avg) + ", total " +
               std::to_string(total);
      }
      case ValueKind::hist:
        return json ? hist_json(r.value) : hist_text(r.value);
      case ValueKind::lhist:
        return json ? lhist_json(r.value, d.lhist_min, d.lhist_max, d.lhist_step)
                    : lhist_text(r.value, d.lhist_min, d.lhist_max, d.lhist_step);
      case ValueKind::string: {
        std::string_view sv = get_string(r.value.data());
        std::string named;
        if (symbolic_text(named, sv)) sv = named;
        std::string q;
        if (!json && !named.empty() && named.front() == kSymbolMarker) return named;
        if (!json) {
          append_text_escaped(q, sv);
          return q;
        }
        q = "\"";
        json_escape(q, sv);
        return q + "\"";
      }
      case ValueKind::tuple: {
        FmtArg elems[ast::kMaxTupleElems];
        const std::size_t n = std::min(d.value_is_string.size(), ast::kMaxTupleElems);
        std::size_t w = 0;
        for (std::size_t k = 0; k < n && w < r.value.size(); ++k) {
          elems[k].is_string = d.value_is_string[k];
          if (k < d.elem_layouts.size() && d.elem_layouts[k]) {
            elems[k].layout = d.elem_layouts[k].get();
            elems[k].s = get_bytes(r.value.data() + w);
            w += kStrWords;
          } else if (elems[k].is_string) {
            elems[k].s = get_string(r.value.data() + w);
            w += kStrWords;
          } else {
            elems[k].i = as_signed(r.value[w++]);
          }
        }
        std::string q;
        append_tuple(q, std::span<const FmtArg>(elems, n), fmt);
        // append_tuple writes print()'s whole line: the map's line takes the value alone.
        if (json) return q.substr(q.find('['), q.rfind(']') - q.find('[') + 1);
        return q.substr(0, q.size() - 1);
      }
      case ValueKind::record: {
        std::string q;
        append_layout_value(q, *d.value_layout, get_bytes(r.value.data()), fmt);
        return q;
      }
    }
    return {};
  };

  if (json) {
    const char* type = is_hist ? "hist" : is_stats ? "stats" : "map";
    out += "{\"type\": \"";
    out += type;
    out += "\", \"data\": {\"";
    json_escape(out, d.name);
    out += "\": ";
    if (keyed) out += "{";
    bool first = true;
    for (const Row& r : rows) {
      if (!first) out += ", ";
      first = false;
      if (keyed) {
        out += "\"";
        json_escape(out, key_text(d, r, ",", false, names));
        out += "\": ";
      }
      out += value_str(r);
    }
    if (keyed) out += "}";
    out += "}}\n";
    return;
  }

  bool first = true;
  for (const Row& r : rows) {
    if (!first) out += "\n";  // bpftrace joins the elements with "\n"
    first = false;
    out += d.name;
    if (keyed) out += "[" + key_text(d, r, ", ", true, names) + "]";
    out += ": ";
    if (is_hist) out += "\n";
    out += value_str(r);  // hist bodies end with a newline, other values do not
  }
  out += "\n";
  if (is_stats) out += "\n";
}

namespace {

// `s` padded to `f`'s width, after `f`'s precision cut it, its terminal controls escaped.
void format_escaped(std::string& out, const FormatSpec& f, std::string_view s) {
  if (f.precision >= 0 && static_cast<std::size_t>(f.precision) < s.size())
    s = s.substr(0, static_cast<std::size_t>(f.precision));
  const std::size_t len = text_escaped_size(s);
  const std::size_t pad =
      f.width > 0 && static_cast<std::size_t>(f.width) > len ? f.width - len : 0;
  if (!f.left) out.append(pad, ' ');
  append_text_escaped(out, s);
  if (f.left) out.append(pad, ' ');
}

void format_one(std::string& out, const FormatSpec& f, const FmtArg& a, bool escape) {
  if (a.layout && a.layout->kind == ValueLayout::Kind::buffer) {  // %r: buf()'s \xNN text
    char text[4 * ast::kMaxBufLength + 1];
    const std::size_t n = buffer_text(
        a.s.substr(0, std::min<std::size_t>(a.layout->size, a.s.size())), text, sizeof text);
    return format_escaped(out, f, std::string_view(text, n));
  }
  if (f.conversion == 's' && !a.s.empty() && a.s.front() == kSymbolMarker) {
    std::string text;
    if (symbolic_text(text, a.s)) {  // a stack may pass the 512 bytes of a plain %s
      // A marker left for the reader is written whole (raw: text output escapes the
      // program's control bytes, so only a marker has them); width and precision then
      // do not apply.
      if ((!escape && f.width < 0 && f.precision < 0) || text.front() == kSymbolMarker) {
        out += text;
      } else {
        format_escaped(out, f, text);
      }
      return;
    }
  }
  if (escape && f.conversion == 's') return format_escaped(out, f, a.s);
  if (escape && f.conversion == 'c') {
    const char c = static_cast<char>(a.i);
    if (text_escaped_size(std::string_view(&c, 1)) != 1) {
      return format_escaped(out, FormatSpec{{}, 's', f.left, false, false, false, false, f.width},
                            std::string_view(&c, 1));
    }
  }
  char spec[32];
  std::size_t n = 0;
  spec[n++] = '%';
  if (f.left) spec[n++] = '-';
  if (f.plus) spec[n++] = '+';
  if (f.space) spec[n++] = ' ';
  if (f.alt) spec[n++] = '#';
  if (f.zero) spec[n++] = '0';
  spec[n] = 0;
  char wp[24] = "";
  if (f.width >= 0 && f.precision >= 0) {
    std::snprintf(wp, sizeof wp, "%d.%d", f.width, f.precision);
  } else if (f.width >= 0) {
    std::snprintf(wp, sizeof wp, "%d", f.width);
  } else if (f.precision >= 0) {
    std::snprintf(wp, sizeof wp, ".%d", f.precision);
  }
  std::strcat(spec, wp);
  n = std::strlen(spec);
  char buf[512];
  int len = 0;
  const char c = f.conversion;
  if (c == 's') {
    // A string argument is not NUL-terminated: bound it by its length and the precision.
    int prec = static_cast<int>(a.s.size());
    if (f.precision >= 0 && f.precision < prec) prec = f.precision;
    len = std::snprintf(buf, sizeof buf, f.left ? "%-*.*s" : "%*.*s", f.width < 0 ? 0 : f.width,
                        prec, a.s.data());
  } else if (c == 'c') {
    spec[n++] = 'c';
    spec[n] = 0;
    len = std::snprintf(buf, sizeof buf, spec, static_cast<int>(static_cast<char>(a.i)));
  } else if (c == 'p') {
    spec[n++] = 'p';
    spec[n] = 0;
    len = std::snprintf(buf, sizeof buf, spec,
                        reinterpret_cast<void*>(static_cast<std::uintptr_t>(a.i)));
  } else {
    const bool is_signed = c == 'd' || c == 'i';
    if (f.length >= FormatSpec::Length::l) {
      spec[n++] = 'l';
      spec[n++] = 'l';
      spec[n++] = c;
      spec[n] = 0;
      if (is_signed) {
        len = std::snprintf(buf, sizeof buf, spec, static_cast<long long>(a.i));
      } else {
        len = std::snprintf(buf, sizeof buf, spec, static_cast<unsigned long long>(a.i));
      }
    } else {
      spec[n++] = c;
      spec[n] = 0;
      // bpftrace passes the argument as an int of the modifier's width.
      std::int64_t v = a.i;
      if (f.length == FormatSpec::Length::h) {
        v = is_signed ? static_cast<std::int16_t>(v) : static_cast<std::uint16_t>(v);
      } else if (f.length == FormatSpec::Length::hh) {
        v = is_signed ? static_cast<std::int8_t>(v) : static_cast<std::uint8_t>(v);
      }
      if (is_signed) {
        len = std::snprintf(buf, sizeof buf, spec, static_cast<int>(v));
      } else {
        len = std::snprintf(buf, sizeof buf, spec, static_cast<unsigned>(v));
      }
    }
  }
  if (len < 0) return;
  out.append(buf, std::min<std::size_t>(static_cast<std::size_t>(len), sizeof buf - 1));
}

}  // namespace

void format_printf(std::string& out, std::span<const FormatSpec> spec, std::span<const FmtArg> args,
                   bool escape) {
  std::size_t next = 0;
  for (const FormatSpec& f : spec) {
    out += f.text;
    if (!f.conversion) continue;
    static const FmtArg kNone{};
    format_one(out, f, next < args.size() ? args[next] : kNone, escape);
    ++next;
  }
}

void append_message(std::string& out, std::string_view type, std::string_view text,
                    OutputFormat fmt) {
  if (fmt == OutputFormat::text) {
    out += text;
    return;
  }
  out += "{\"type\": \"";
  out += type;
  out += "\", \"data\": \"";
  json_escape(out, text);
  out += "\"}\n";
}

namespace {

void append_element(std::string& out, const FmtArg& v, OutputFormat fmt) {
  std::string text;
  if (!v.layout && v.is_string && symbolic_text(text, v.s)) {
    if (text.front() == kSymbolMarker) {  // left for the reader (format_one)
      if (fmt == OutputFormat::text) {
        out += text;  // raw
      } else {
        out += "\"";
        json_escape(out, text);
        out += "\"";
      }
      return;
    }
    FmtArg named = v;
    named.s = text;
    return append_element(out, named, fmt);
  }
  if (v.layout) {
    append_layout_value(out, *v.layout, v.s, fmt);
  } else if (!v.is_string) {
    out += std::to_string(v.i);
  } else if (fmt == OutputFormat::text) {
    append_text_escaped(out, v.s);
  } else {
    out += "\"";
    json_escape(out, v.s);
    out += "\"";
  }
}

}  // namespace

void append_value(std::string& out, const FmtArg& v, OutputFormat fmt) {
  if (fmt == OutputFormat::json) out += "{\"type\": \"value\", \"data\": ";
  append_element(out, v, fmt);
  out += fmt == OutputFormat::text ? "\n" : "}\n";
}

void append_tuple(std::string& out, std::span<const FmtArg> elems, OutputFormat fmt) {
  const bool text = fmt == OutputFormat::text;
  out += text ? "(" : "{\"type\": \"value\", \"data\": [";
  for (std::size_t k = 0; k < elems.size(); ++k) {
    if (k > 0) out += text ? ", " : ",";
    append_element(out, elems[k], fmt);
  }
  out += text ? ")\n" : "]}\n";
}

void set_symbols_deferred(bool on) {
  g_deferred.store(on, std::memory_order_relaxed);
}

bool has_symbol_markers(std::string_view text) {
  return text.find(kSymbolMarker) != std::string_view::npos ||
         text.find("\\u001e") != std::string_view::npos;
}

void expand_symbols(std::string& text) {
  if (!has_symbol_markers(text)) return;
  std::string out;
  out.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    const bool raw = text[i] == kSymbolMarker;
    const bool esc = !raw && text.compare(i, 6, "\\u001e") == 0;
    if (raw || esc) {
      const std::string_view end = raw ? std::string_view("\x1f", 1) : std::string_view("\\u001f");
      const std::size_t from = i + (raw ? 1 : 6);
      const std::size_t stop = text.find(end, from);
      std::string named;
      if (stop != std::string::npos && stop - from < kSymbolMarkerBytes) {
        const std::string marker =
            kSymbolMarker + text.substr(from, stop - from) + kSymbolMarkerEnd;
        if (symbolic_text(named, marker, /*right_away=*/true, /*request_places=*/true)) {
          if (raw) {
            out += named;
          } else {
            json_escape(out, named);
          }
          i = stop + end.size();
          continue;
        }
      }
    }
    out += text[i++];
  }
  text = std::move(out);
}

}  // namespace hotprobe::script
