// What the script layer learns from DWARF, as text (elf/dwarf.h, dwarf_type_facts): the
// parameters of functions for `args`, and source lines' addresses for source-line probes
// (`uprobe:BIN@FILE:LINE`) from the line table, as bpftrace maps them.
#include <dwarf.h>
#include <elfutils/libdw.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "elf/dwarf.h"

namespace hp::elf {

namespace {

// Whether `path` is `suffix` or ends with "/" + `suffix` (whole path components).
bool path_ends_with(std::string_view path, std::string_view suffix) {
  if (suffix.empty() || path.size() < suffix.size()) return false;
  if (!path.ends_with(suffix)) return false;
  return path.size() == suffix.size() || suffix.front() == '/' ||
         path[path.size() - suffix.size() - 1] == '/';
}

// `path` below `dir` when relative, with "." and ".." resolved as written (a build that
// compiles ../src/x.c names it so, and its line table may or may not add the directory).
std::string normal(std::string_view path, const char* dir) {
  std::filesystem::path p(path);
  if (p.is_relative() && dir && *dir) p = std::filesystem::path(dir) / p;
  return p.lexically_normal().string();
}

const char* comp_dir(Dwarf_Die* cu) {
  Dwarf_Attribute a;
  return dwarf_formstring(dwarf_attr(cu, DW_AT_comp_dir, &a));
}

// The source file a compilation unit was compiled from: DW_AT_name, below DW_AT_comp_dir
// when relative. A skeleton unit (-gsplit-dwarf) may name it only in its split unit.
std::string unit_source(Dwarf_Die* cu) {
  const char* name = dwarf_diename(cu);
  return name && *name ? normal(name, comp_dir(cu)) : std::string();
}

struct Unit {
  Dwarf_Die die;  // the unit whose line table is read (the skeleton's, for split DWARF)
  std::string source;
};

}  // namespace

Result<std::uint64_t> source_line_address(const std::string& module, std::string_view file,
                                          unsigned line, unsigned column) {
  auto info = DwarfInfo::open(module);
  if (!info.ok()) return info.error();
  const std::string& debug = (*info)->debug_path();
  const int fd = ::open(debug.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Error(Errc::not_found, "cannot open " + debug);
  Dwarf* dw = dwarf_begin(fd, DWARF_C_READ);
  if (!dw) {
    ::close(fd);
    return Error(Errc::not_found, debug + " has no DWARF line table (build with -g)");
  }
  std::vector<Unit> matched;
  std::vector<std::string> all;
  Dwarf_CU* cu = nullptr;
  Dwarf_Die cudie, subdie;
  std::uint8_t unit_type = 0;
  while (dwarf_get_units(dw, cu, &cu, nullptr, &unit_type, &cudie, &subdie) == 0) {
    std::string src = unit_source(&cudie);
    if (src.empty() && unit_type == DW_UT_skeleton && subdie.cu) src = unit_source(&subdie);
    Dwarf_Files* files = nullptr;
    std::size_t nfiles = 0;
    if (src.empty() && dwarf_getsrcfiles(&cudie, &files, &nfiles) == 0 && nfiles > 1) {
      // A skeleton unit whose .dwo is gone names no file: its line table's primary file.
      if (const char* f = dwarf_filesrc(files, 1, nullptr, nullptr))
        src = normal(f, comp_dir(&cudie));
    }
    if (src.empty()) continue;
    all.push_back(src);
    if (path_ends_with(src, file)) matched.push_back(Unit{cudie, src});
  }
  auto done = [&](Result<std::uint64_t> r) {
    dwarf_end(dw);
    ::close(fd);
    return r;
  };
  const std::string where = std::string(file) + ":" + std::to_string(line) +
                            (column ? ":" + std::to_string(column) : std::string());
  if (matched.empty()) {
    std::string names;
    for (std::size_t i = 0; i < all.size() && i < 8; ++i)
      names += (i ? ", " : "") + all[i];
    if (all.size() > 8) names += ", ...";
    return done(Error(Errc::not_found,
                      "no compilation unit of " + module + " was compiled from '" +
                          std::string(file) + "'" +
                          (names.empty() ? std::string(" (its debug info names no source file)")
                                         : " (its source files: " + names + ")")));
  }
  for (const Unit& u : matched) {
    if (u.source != matched.front().source) {
      return done(Error(Errc::invalid_argument, "'" + std::string(file) +
                                                    "' matches several source files of " + module +
                                                    ": " + matched.front().source + " and " +
                                                    u.source + " (write more of the path)"));
    }
  }
  for (Unit u : matched) {
    Dwarf_Lines* lines = nullptr;
    std::size_t n = 0;
    if (dwarf_getsrclines(&u.die, &lines, &n) != 0) continue;
    for (std::size_t i = 0; i < n; ++i) {
      Dwarf_Line* l = dwarf_onesrcline(lines, i);
      int lineno = 0, col = 0;
      if (!l || dwarf_lineno(l, &lineno) != 0 || dwarf_linecol(l, &col) != 0) continue;
      const char* src = dwarf_linesrc(l, nullptr, nullptr);
      // Rows of the unit's own file only, not of headers it includes.
      if (!src || normal(src, comp_dir(&u.die)) != u.source) continue;
      if (static_cast<unsigned>(lineno) != line || (column && static_cast<unsigned>(col) != column))
        continue;
      Dwarf_Addr addr = 0;
      if (dwarf_lineaddr(l, &addr) == 0) return done(addr);
    }
  }
  return done(Error(Errc::not_found, "line " + where + " of " + module +
                                         " has no code (the compiler emitted none for it, or "
                                         "optimized it away): try a nearby line"));
}

std::string dwarf_line_fact(const std::string& module, std::string_view spec) {
  // spec: "@FILE:LINE" or "@FILE:LINE:COLUMN"
  auto parse_number = [](std::string_view s, unsigned& out) {
    if (s.empty() || s.size() > 9) return false;
    out = 0;
    for (char c : s) {
      if (c < '0' || c > '9') return false;
      out = out * 10 + static_cast<unsigned>(c - '0');
    }
    return true;
  };
  std::string_view rest = spec.substr(1);
  unsigned line = 0, column = 0;
  std::size_t c1 = rest.find(':');
  std::string_view file = rest.substr(0, c1);
  std::string_view nums = c1 == std::string_view::npos ? "" : rest.substr(c1 + 1);
  const std::size_t c2 = nums.find(':');
  const bool ok = parse_number(nums.substr(0, c2), line) &&
                  (c2 == std::string_view::npos || parse_number(nums.substr(c2 + 1), column));
  const std::string head = module + "\t" + std::string(spec) + "\t";
  if (!ok || file.empty() || line == 0) {
    return "E\t" + head + "'" + std::string(spec.substr(1)) +
           "' is not FILE:LINE or FILE:LINE:COLUMN\n";
  }
  auto addr = source_line_address(module, file, line, column);
  if (!addr.ok()) return "E\t" + head + addr.error().message() + "\n";
  char buf[24];
  std::snprintf(buf, sizeof buf, "%llu", static_cast<unsigned long long>(*addr));
  return "L\t" + head + buf + "\n";
}

namespace {

// `code` with every record key "r<hex>;" prefixed with "<id>:".
std::string prefix_keys(const std::string& code, const std::string& id) {
  std::string out;
  for (char c : code) {
    out += c;
    if (c == 'r') out += id + ":";
  }
  return out;
}

std::string no_tabs(std::string s) {
  for (char& c : s)
    if (c == '\t' || c == '\n') c = ' ';
  return s;
}

}  // namespace

namespace {

std::string record_lines(const std::vector<DwarfRecord>& records, const std::string& key) {
  std::string out;
  for (const DwarfRecord& r : records) {
    out += "R\t" + key + ":" + r.key + "\t" + no_tabs(r.name) + "\t" + std::to_string(r.size) +
           "\t" + (r.is_union ? "1" : "0") + "\n";
    for (const DwarfMember& m : r.members) {
      out += "M\t" + no_tabs(m.name) + "\t" + std::to_string(m.offset) + "\t" +
             std::to_string(m.bit_offset) + "\t" + std::to_string(m.bit_size) + "\t" +
             prefix_keys(m.code, key) + "\n";
    }
  }
  return out;
}

}  // namespace

std::string dwarf_type_facts(const std::string& module, const std::string& pattern, int id) {
  if (pattern.starts_with('@')) return dwarf_line_fact(module, pattern);
  if (pattern.starts_with("struct ") || pattern.starts_with("union ")) {
    auto dw = DwarfInfo::open(module);
    return dw ? record_lines((*dw)->type_records(pattern), std::to_string(id)) : std::string();
  }
  const std::string head = no_tabs(module) + "\t" + no_tabs(pattern) + "\t";
  auto error = [&](const std::string& why) { return "E\t" + head + no_tabs(why) + "\n"; };
  auto dw = DwarfInfo::open(module);
  if (!dw) {
    if (dw.error().code() == Errc::not_found &&
        dw.error().message().find("DWARF") != std::string::npos) {
      return error(module +
                   " has no DWARF: build with -g, or install its -dbg/-dbgsym package; "
                   "hotprobe list -v shows what is there");
    }
    return error("cannot read the debug info of '" + module +
                 "' for args: " + dw.error().message() + " (args needs the probed file's path)");
  }
  std::vector<std::string> names;
  if (pattern.find_first_of("*?[") != std::string::npos) {
    names = (*dw)->function_names(pattern);
  } else {
    names.push_back(pattern);
  }
  if (names.empty())
    return error("no function of " + module + "'s debug info matches '" + pattern + "'");
  const std::string key = std::to_string(id);
  std::string out;
  for (const std::string& n : names) {
    auto fn = (*dw)->function(n);
    if (!fn) return error(fn.error().message());
    out += "F\t" + head + n + "\n";
    for (const DwarfParam& p : fn->params) {
      const bool in_reg = p.location.kind == ArgLocation::Kind::reg;
      const int pos = in_reg ? arg_register_position(p.location.reg) : -1;
      const int pos2 = in_reg ? arg_register_position(p.location.reg2) : -1;
      out += "P\t" + no_tabs(p.name) + "\t" + std::to_string(pos) + "\t" + std::to_string(pos2) +
             "\t" + no_tabs(p.location.where) + "\t" + prefix_keys(p.code, key) + "\n";
    }
    out += record_lines(fn->records, key);
  }
  return out;
}

}  // namespace hp::elf
