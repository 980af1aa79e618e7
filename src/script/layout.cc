// Arrays and structs as values: their layouts and their printed form (layout.h).
#include "script/layout.h"

#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "script/output.h"

namespace hotprobe::script {

std::shared_ptr<const ValueLayout> make_layout(const ast::TypeTable& types, int ctype) {
  auto l = std::make_shared<ValueLayout>();
  const ast::CType& c = types.at(ctype);
  l->size = types.size_of(ctype);
  switch (c.kind) {
    case ast::CType::Kind::array: {
      const ast::CType& e = types.at(c.inner);
      if (e.kind == ast::CType::Kind::integer && e.size == 1) {
        l->kind = ValueLayout::Kind::chars;
        break;
      }
      l->kind = ValueLayout::Kind::array;
      l->count = c.count;
      l->elem = make_layout(types, c.inner);
      break;
    }
    case ast::CType::Kind::record:
      if (types.records[static_cast<std::size_t>(c.record)].buffer) {
        l->kind = ValueLayout::Kind::buffer;
        break;
      }
      if (types.records[static_cast<std::size_t>(c.record)].raw_stack) {
        l->kind = ValueLayout::Kind::raw_stack;
        break;
      }
      l->kind = ValueLayout::Kind::record;
      l->current_form = types.records[static_cast<std::size_t>(c.record)].current_form;
      l->tuple = types.records[static_cast<std::size_t>(c.record)].tuple;
      for (const ast::Field& f : types.records[static_cast<std::size_t>(c.record)].fields) {
        l->fields.push_back(ValueLayout::Field{f.name, f.offset, f.bit_offset, f.bit_width,
                                               make_layout(types, f.type)});
      }
      break;
    case ast::CType::Kind::integer:
      l->kind = ValueLayout::Kind::integer;
      l->is_signed = c.is_signed;
      break;
    case ast::CType::Kind::pointer:
      l->kind = ValueLayout::Kind::integer;
      l->is_signed = true;  // a value prints it as bpftrace's int64
      l->pointer = true;
      break;
    case ast::CType::Kind::void_:
      l->kind = ValueLayout::Kind::integer;
      break;
  }
  return l;
}

namespace {

std::uint64_t load_unit(std::string_view bytes, std::uint32_t offset, std::uint32_t size) {
  std::uint64_t v = 0;
  if (offset < bytes.size())
    std::memcpy(&v, bytes.data() + offset, std::min<std::size_t>(size, bytes.size() - offset));
  return v;
}

std::int64_t integer_of(const ValueLayout& l, std::uint64_t raw) {
  // Each branch widened on its own: a ?: of int32 and uint32 would be uint32.
  switch (l.size) {
    case 1:
      if (l.is_signed) return static_cast<std::int8_t>(raw);
      return static_cast<std::uint8_t>(raw);
    case 2:
      if (l.is_signed) return static_cast<std::int16_t>(raw);
      return static_cast<std::uint16_t>(raw);
    case 4:
      if (l.is_signed) return static_cast<std::int32_t>(raw);
      return static_cast<std::uint32_t>(raw);
    default:
      return static_cast<std::int64_t>(raw);
  }
}

void append_integer(std::string& out, const ValueLayout& l, std::int64_t v) {
  if (!l.is_signed && l.size == 8) {
    out += std::to_string(static_cast<std::uint64_t>(v));
  } else {
    out += std::to_string(v);
  }
}

}  // namespace

namespace {

// key: bpftrace's map key form ({.a=1,.b=2}, pointers in hex).
// hex: pointers in hex (current bpftrace's form: ast::Record::current_form).
void append_form(std::string& out, const ValueLayout& l, std::string_view bytes, OutputFormat fmt,
                 bool escape, bool key, bool hex = false) {
  const bool json = fmt == OutputFormat::json;
  if (l.current_form && !json) {  // current bpftrace's form, as a value and as a key
    key = false;
    hex = true;
  }
  switch (l.kind) {
    case ValueLayout::Kind::integer:
      if ((key || hex) && l.pointer) {
        char buf[24];
        std::snprintf(buf, sizeof buf, "0x%" PRIx64, load_unit(bytes, 0, 8));
        out += buf;
        return;
      }
      append_integer(out, l, integer_of(l, load_unit(bytes, 0, l.size)));
      return;
    case ValueLayout::Kind::chars: {
      const std::string_view all = bytes.substr(0, std::min<std::size_t>(l.size, bytes.size()));
      const std::string_view s = all.substr(0, std::min(all.size(), all.find('\0')));
      if (json) {
        out += "\"";
        json_escape(out, s);
        out += "\"";
      } else if (escape) {
        append_text_escaped(out, s);
      } else {
        out += s;
      }
      return;
    }
    case ValueLayout::Kind::buffer: {
      char text[4 * ast::kMaxBufLength + 1];
      const std::size_t n = buffer_text(
          bytes.substr(0, std::min<std::size_t>(l.size, bytes.size())), text, sizeof text);
      if (json) {
        out += "\"";
        json_escape(out, std::string_view(text, n));
        out += "\"";
      } else {
        out.append(text, n);  // printable ASCII only: nothing a terminal acts on
      }
      return;
    }
    case ValueLayout::Kind::raw_stack: {  // bpftrace: "\n", then each address in hex and "\n"
      const std::uint64_t n = std::min<std::uint64_t>(load_unit(bytes, 0, 8), l.size / 8 - 1);
      out += "\n";
      for (std::uint64_t k = 0; k < n; ++k) {
        char buf[24];
        std::snprintf(buf, sizeof buf, "%" PRIx64 "\n",
                      load_unit(bytes, static_cast<std::uint32_t>(8 * (k + 1)), 8));
        out += buf;
      }
      return;
    }
    case ValueLayout::Kind::array: {
      out += "[";
      const std::uint32_t step = l.elem->size;
      for (std::uint32_t k = 0; k < l.count; ++k) {
        if (k) out += ",";
        const std::size_t at = std::min<std::size_t>(std::size_t{k} * step, bytes.size());
        append_form(out, *l.elem, bytes.substr(at), fmt, escape, key, hex);
      }
      out += "]";
      return;
    }
    case ValueLayout::Kind::record: {
      if (l.tuple) {  // (1, x); in JSON [1,"x"]
        out += json ? "[" : "(";
        for (std::size_t k = 0; k < l.fields.size(); ++k) {
          if (k) out += json ? "," : ", ";
          const ValueLayout::Field& f = l.fields[k];
          append_form(out, *f.layout, bytes.substr(std::min<std::size_t>(f.offset, bytes.size())),
                      fmt, escape, key, hex);
        }
        out += json ? "]" : ")";
        return;
      }
      out += key ? "{" : "{ ";
      bool first = true;
      for (const ValueLayout::Field& f : l.fields) {
        if (!first) out += key ? "," : ", ";
        first = false;
        if (key) {
          out += ".";
          out += f.name;
          out += "=";
        } else if (json) {
          out += "\"";
          json_escape(out, f.name);
          out += "\": ";
        } else {
          out += ".";
          out += f.name;
          out += " = ";
        }
        if (f.bit_width) {
          std::uint64_t unit = load_unit(bytes, f.offset, f.layout->size) >> f.bit_offset;
          if (f.bit_width < 64) unit &= (std::uint64_t{1} << f.bit_width) - 1;
          out += std::to_string(unit);  // zero-extended, as bpftrace reads bit fields
          continue;
        }
        const std::size_t at = std::min<std::size_t>(f.offset, bytes.size());
        append_form(out, *f.layout, bytes.substr(at), fmt, escape, key, hex);
      }
      out += key ? "}" : " }";
      return;
    }
  }
}

}  // namespace

std::size_t buffer_text(std::string_view bytes, char* out, std::size_t room) {
  if (bytes.empty()) return 0;
  const std::size_t len =
      std::min<std::size_t>(static_cast<unsigned char>(bytes[0]), bytes.size() - 1);
  std::size_t k = 0;
  for (std::size_t i = 0; i < len; ++i) {
    const unsigned char c = static_cast<unsigned char>(bytes[1 + i]);
    if (c >= 0x20 && c < 0x7f) {
      if (k + 1 > room) break;
      out[k++] = static_cast<char>(c);
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      if (k + 4 > room) break;
      out[k++] = '\\';
      out[k++] = 'x';
      out[k++] = kHex[c >> 4];
      out[k++] = kHex[c & 15];
    }
  }
  return k;
}

void append_layout_value(std::string& out, const ValueLayout& l, std::string_view bytes,
                         OutputFormat fmt, bool escape) {
  append_form(out, l, bytes, fmt, escape, false);
}

void append_layout_key(std::string& out, const ValueLayout& l, std::string_view bytes,
                       bool escape) {
  append_form(out, l, bytes, OutputFormat::text, escape, true);
}

}  // namespace hotprobe::script
