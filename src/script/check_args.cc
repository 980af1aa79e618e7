// uprobe `args` and `#include`: the type facts appended to a script (check_args.h).
#include "script/check_args.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

#include "script/check_pass.h"
#include "script/parser.h"

namespace hotprobe::script {

namespace {

using ast::CType;
using ast::Expr;

// ----- the facts text -----

std::vector<std::string_view> split_tabs(std::string_view line) {
  std::vector<std::string_view> out;
  for (;;) {
    const std::size_t tab = line.find('\t');
    out.push_back(line.substr(0, tab));
    if (tab == std::string_view::npos) return out;
    line.remove_prefix(tab + 1);
  }
}

std::uint64_t number(std::string_view s) {
  return std::strtoull(std::string(s).c_str(), nullptr, 10);
}

struct RecordLine {
  std::string key, name;
  std::uint32_t size = 0;
  bool is_union = false;
  struct Member {
    std::string name, code;
    std::uint32_t offset = 0, bit_offset = 0, bit_size = 0;
  };
  std::vector<Member> members;
};

// Turns codes (elf/dwarf.h, DwarfMember) into TypeTable types.
struct CodeReader {
  ast::TypeTable& T;
  std::map<std::string, int>& records;  // key -> record
  std::map<std::string, int> opaque;    // name -> record

  int opaque_type(const std::string& name, std::uint32_t size) {
    auto [it, inserted] = opaque.try_emplace(name, static_cast<int>(T.records.size()));
    if (inserted) {
      T.records.push_back(
          ast::Record{name,
                      false,
                      true,
                      {},
                      size,
                      std::max<std::uint32_t>(1, std::min<std::uint32_t>(size, 8))});
    }
    return T.record_type(it->second);
  }

  static std::uint32_t digits(std::string_view& c) {
    std::uint32_t v = 0;
    while (!c.empty() && c[0] >= '0' && c[0] <= '9') {
      v = v * 10 + static_cast<std::uint32_t>(c[0] - '0');
      c.remove_prefix(1);
    }
    return v;
  }

  int read(std::string_view& c, int depth = 0) {
    if (c.empty() || depth > 64) return opaque_type("(unknown type)", 8);
    const char k = c[0];
    c.remove_prefix(1);
    switch (k) {
      case 'i':
      case 'u': {
        const std::uint32_t size = digits(c);
        if (size == 1 || size == 2 || size == 4 || size == 8) return T.integer(size, k == 'i');
        return opaque_type("(" + std::to_string(size) + "-byte integer)", size);
      }
      case 'f': {
        const std::uint32_t size = digits(c);
        return opaque_type(size == 4 ? "float" : size == 8 ? "double" : "long double", size);
      }
      case 'v':
        return T.void_type();
      case 'p':
        return T.pointer(read(c, depth + 1));
      case 'a': {
        const std::uint32_t n = digits(c);
        if (!c.empty() && c[0] == ',') c.remove_prefix(1);
        return T.array(read(c, depth + 1), n);
      }
      case 'r': {
        const std::size_t end = c.find(';');
        const std::string key(c.substr(0, end));
        c.remove_prefix(end == std::string_view::npos ? c.size() : end + 1);
        auto it = records.find(key);
        if (it != records.end()) return T.record_type(it->second);
        // Past the records the command lists: incomplete (reading it says so).
        T.records.push_back(ast::Record{"struct (not read: " + key + ")", false, false, {}, 0, 1});
        records[key] = static_cast<int>(T.records.size() - 1);
        return T.record_type(records[key]);
      }
      default: {
        const std::uint32_t size = digits(c);
        return opaque_type("(" + std::to_string(size) + " opaque bytes)", size);
      }
    }
  }

  int read(const std::string& code) {
    std::string_view c = code;
    return read(c);
  }
};

// A record's members laid into `rec` (offsets from DWARF; bit fields as the lowering
// reads them: a unit of the member's type holding all its bits).
void fill_record(CodeReader& reader, int rec, const RecordLine& line) {
  ast::TypeTable& T = reader.T;
  std::vector<ast::Field> fields;
  std::uint32_t align = 1;
  for (const RecordLine::Member& m : line.members) {
    ast::Field f;
    f.name = m.name;
    f.type = reader.read(m.code);
    f.offset = m.offset;
    if (m.bit_size) {
      const std::uint64_t bitpos = m.offset * 8ull + m.bit_offset;
      const std::uint32_t unit = std::max<std::uint32_t>(1, T.size_of(f.type));
      const std::uint64_t off = bitpos / (unit * 8ull) * unit;
      if (bitpos - off * 8 + m.bit_size <= unit * 8ull) {
        f.offset = static_cast<std::uint32_t>(off);
        f.bit_offset = static_cast<std::uint32_t>(bitpos - off * 8);
      } else {
        f.bit_offset = m.bit_offset;
      }
      f.bit_width = m.bit_size;
    }
    align = std::max(align, T.align_of(f.type));
    fields.push_back(std::move(f));
  }
  ast::Record& r = T.records[static_cast<std::size_t>(rec)];
  r.fields = std::move(fields);
  r.size = line.size;
  r.align = std::max<std::uint32_t>(1, align);
  r.complete = true;
}

// The text of header `path`, or why not.
bool read_file(const std::string& path, std::string& out) {
  std::ifstream in(path);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  out = ss.str();
  return true;
}

std::string dir_of(std::string_view path) {
  const std::size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? "." : std::string(path.substr(0, slash));
}

// The `#include` lines of `text`: their spelled names ("<x.h>", "\"x.h\"").
std::vector<std::string> includes_of(std::string_view text) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    const std::size_t hash = line.find_first_not_of(" \t");
    if (hash == std::string_view::npos || line[hash] != '#') continue;
    line.remove_prefix(hash + 1);
    line.remove_prefix(std::min(line.size(), line.find_first_not_of(" \t")));
    if (!line.starts_with("include")) continue;
    line.remove_prefix(7);
    line.remove_prefix(std::min(line.size(), line.find_first_not_of(" \t")));
    if (line.empty() || (line[0] != '<' && line[0] != '"')) continue;
    const std::size_t close = line.find(line[0] == '<' ? '>' : '"', 1);
    if (close == std::string_view::npos) continue;
    out.emplace_back(line.substr(0, close + 1));
  }
  return out;
}

// The headers hotprobe knows without reading them: their types are the script's own
// integer names (int32_t, size_t, ...) and bool.
bool is_known_header(std::string_view spelled) {
  static constexpr std::string_view kKnown[] = {"<stdint.h>",   "<stddef.h>",    "<stdbool.h>",
                                                "<inttypes.h>", "<sys/types.h>", "<linux/types.h>"};
  return std::find(std::begin(kKnown), std::end(kKnown), spelled) != std::end(kKnown);
}

// -I DIR and --include FILE (set_include_options).
std::vector<std::string>& include_dirs() {
  static std::vector<std::string> dirs;
  return dirs;
}
std::vector<std::string>& include_files() {
  static std::vector<std::string> files;
  return files;
}

void add_header(const std::string& spelled, const std::string& from_dir, std::string& facts,
                std::set<std::string>& done, int depth) {
  if (!done.insert(spelled).second || is_known_header(spelled)) return;
  const std::string name = spelled.substr(1, spelled.size() - 2);
  std::vector<std::string> dirs;
  if (spelled[0] == '"') dirs = {from_dir, "."};
  dirs.insert(dirs.end(), include_dirs().begin(), include_dirs().end());
  dirs.insert(dirs.end(), {"/usr/local/include", "/usr/include/x86_64-linux-gnu", "/usr/include"});
  std::string text, looked;
  for (const std::string& d : dirs) {
    const std::string path = name.starts_with("/") ? name : d + "/" + name;
    if (read_file(path, text)) {
      facts +=
          "H\t" + spelled + "\t" + path + "\t" + std::to_string(text.size()) + "\n" + text + "\n";
      if (depth < 16) {
        for (const std::string& inner : includes_of(text))
          add_header(inner, dir_of(path), facts, done, depth + 1);
      }
      return;
    }
    looked += (looked.empty() ? "" : ", ") + d;
    if (name.starts_with("/")) break;
  }
  facts += "X\t" + spelled + "\tcannot read header " + spelled + " (looked in " + looked +
           "): give its path, or define its types in the script\n";
}

// Does `e` (or what it holds) read `args`?
bool uses_args(const Expr& e) {
  if (checking::is_args(e)) return true;
  return std::any_of(e.args.begin(), e.args.end(),
                     [](const ast::ExprPtr& a) { return a && uses_args(*a); });
}

bool uses_args(const std::vector<ast::Stmt>& body) {
  for (const ast::Stmt& s : body) {
    for (const ast::ExprPtr* e : {&s.expr, &s.target, &s.value, &s.cond}) {
      if (*e && uses_args(**e)) return true;
    }
    if (uses_args(s.body) || uses_args(s.else_body)) return true;
  }
  return false;
}

}  // namespace

void set_include_options(std::vector<std::string> dirs, std::vector<std::string> files) {
  include_dirs() = std::move(dirs);
  include_files() = std::move(files);
}

std::string_view script_part(std::string_view source) {
  const std::size_t at = source.find(kTypeFactsMarker);
  return at == std::string_view::npos ? source : source.substr(0, at);
}

// The structs and unions named only in DWARF one script may look up (each lookup reads
// the debug information of the probed files).
constexpr std::size_t kMaxNamedRecords = 64;

std::string with_type_facts(std::string_view source, std::string_view filename,
                            const DwarfLookup& lookup) {
  const std::string_view script = script_part(source);
  std::string facts;
  std::set<std::string> done;
  const std::string dir = filename == "-e" ? std::string(".") : dir_of(filename);
  for (const std::string& file : include_files()) {  // --include FILE: <FILE> first
    const std::string spelled =
        file.starts_with("<") || file.starts_with("\"") ? file : "<" + file + ">";
    add_header(spelled, dir, facts, done, 0);
    facts += "I\t" + spelled + "\n";
  }
  for (const std::string& spelled : includes_of(script))
    add_header(spelled, dir, facts, done, 0);
  std::string full = std::string(script) + std::string(kTypeFactsMarker) + facts;
  const bool args = script.find("args") != std::string_view::npos;
  const bool records = script.find("struct ") != std::string_view::npos ||
                       script.find("union ") != std::string_view::npos;
  if (args || records || script.find('@') != std::string_view::npos) {
    Diagnostics diags;
    ast::Program program = parse(full, filename, diags);
    std::set<std::string> asked;
    int id = 0;
    for (const ast::Action& a : program.actions) {
      for (const ast::AttachPoint& p : a.probes) {  // source-line probes: their addresses
        if (!p.source_line.empty() && asked.insert(p.module + "\t" + p.source_line).second)
          full += lookup(p.module, p.source_line, id++);
      }
      if (!args) continue;
      if ((!a.predicate || !uses_args(*a.predicate)) && !uses_args(a.body)) continue;
      for (const ast::AttachPoint& p : a.probes) {
        if ((p.probe.kind != Probe::Kind::uprobe && p.probe.kind != Probe::Kind::uretprobe) ||
            p.function.empty() || !asked.insert(p.module + "\t" + p.function).second)
          continue;
        full += lookup(p.module, p.function, id++);
      }
    }
    // The structs and unions the script names but neither it nor its headers define: from
    // the DWARF of the files its user probes are on, the first that defines each (as
    // bpftrace reads them from the probed files' DWARF). Only those the script's own text
    // names (not a header's forward declarations), at most kMaxNamedRecords of them.
    std::vector<std::string> modules;
    for (const ast::Action& a : program.actions) {
      for (const ast::AttachPoint& p : a.probes) {
        if ((p.probe.kind == Probe::Kind::uprobe || p.probe.kind == Probe::Kind::uretprobe) &&
            !p.module.empty() &&
            std::find(modules.begin(), modules.end(), p.module) == modules.end())
          modules.push_back(p.module);
      }
    }
    std::size_t named = 0;
    for (const ast::Record& r : program.types.records) {
      if (r.complete || r.name.find("(anonymous)") != std::string::npos ||
          (!r.name.starts_with("struct ") && !r.name.starts_with("union ")) ||
          script.find(r.name.substr(r.name.find(' ') + 1)) == std::string_view::npos ||
          ++named > kMaxNamedRecords)
        continue;
      for (const std::string& m : modules) {
        const std::string lines = lookup(m, r.name, id++);
        full += lines;
        if (!lines.empty()) break;
      }
    }
  }
  if (full.size() == script.size() + kTypeFactsMarker.size()) return std::string(script);
  return full;
}

void load_type_facts(std::string_view facts, FactsPart part, ast::Program& program) {
  ast::TypeTable& T = program.types;
  ast::TypeFacts& out = program.facts;
  std::vector<RecordLine> records;
  struct Pending {
    std::size_t function;
    std::vector<std::string_view> f;
  };
  std::vector<Pending> params;
  while (!facts.empty()) {
    std::size_t end = facts.find('\n');
    if (end == std::string_view::npos) end = facts.size();
    const std::vector<std::string_view> f = split_tabs(facts.substr(0, end));
    facts.remove_prefix(std::min(facts.size(), end + 1));
    if (f[0] == "H" && f.size() == 4) {
      const std::size_t n = std::min<std::size_t>(number(f[3]), facts.size());
      if (part == FactsPart::headers) {
        out.headers[std::string(f[1])] = std::string(facts.substr(0, n));
        out.header_paths[std::string(f[1])] = std::string(f[2]);
      }
      facts.remove_prefix(std::min(facts.size(), n + 1));
    } else if (part == FactsPart::headers) {
      if (f[0] == "X" && f.size() == 3)
        out.errors["#include " + std::string(f[1])] = std::string(f[2]);
      if (f[0] == "I" && f.size() == 2) out.implicit_includes.emplace_back(f[1]);
    } else if (f[0] == "L" && f.size() == 4) {
      out.lines[std::string(f[1]) + "\t" + std::string(f[2])] = number(f[3]);
    } else if (f[0] == "E" && f.size() == 4) {
      out.errors[std::string(f[1]) + "\t" + std::string(f[2])] = std::string(f[3]);
    } else if (f[0] == "F" && f.size() == 4) {
      out.functions.push_back(
          ast::ArgFunction{std::string(f[1]), std::string(f[2]), std::string(f[3]), {}});
    } else if (f[0] == "P" && f.size() == 6 && !out.functions.empty()) {
      params.push_back(Pending{out.functions.size() - 1, f});
    } else if (f[0] == "R" && f.size() == 5) {
      RecordLine r;
      r.key = f[1];
      r.name = f[2];
      r.size = static_cast<std::uint32_t>(number(f[3]));
      r.is_union = f[4] == "1";
      records.push_back(std::move(r));
    } else if (f[0] == "M" && f.size() == 6 && !records.empty()) {
      records.back().members.push_back(RecordLine::Member{
          std::string(f[1]), std::string(f[5]), static_cast<std::uint32_t>(number(f[2])),
          static_cast<std::uint32_t>(number(f[3])), static_cast<std::uint32_t>(number(f[4]))});
    }
  }
  // Records first (their members may name each other), then their members and the
  // parameters. A struct the script defines keeps the script's layout under its name;
  // DWARF's is then a record of its own.
  std::map<std::string, int> keys;
  std::vector<std::pair<int, const RecordLine*>> fill;
  for (const RecordLine& r : records) {
    if (keys.count(r.key)) continue;
    int rec = -1;
    const bool anonymous = r.name.find("(anonymous)") != std::string::npos;
    auto tag = T.struct_tags.find(r.name);
    if (!anonymous && tag == T.struct_tags.end()) {
      rec = T.record(r.name, r.is_union);
    } else if (!anonymous && !T.records[static_cast<std::size_t>(tag->second)].complete &&
               T.records[static_cast<std::size_t>(tag->second)].is_union == r.is_union) {
      rec = tag->second;
    } else {
      T.records.push_back(ast::Record{r.name, r.is_union, false, {}, 0, 1});
      rec = static_cast<int>(T.records.size() - 1);
    }
    keys[r.key] = rec;
    fill.emplace_back(rec, &r);
  }
  CodeReader reader{T, keys, {}};
  for (auto& [rec, line] : fill)
    fill_record(reader, rec, *line);
  for (const Pending& p : params) {
    ast::ArgParam a;
    a.name = p.f[1];
    a.position = static_cast<int>(std::strtol(std::string(p.f[2]).c_str(), nullptr, 10));
    a.position2 = static_cast<int>(std::strtol(std::string(p.f[3]).c_str(), nullptr, 10));
    a.where = p.f[4];
    a.type = reader.read(std::string(p.f[5]));
    out.functions[p.function].params.push_back(std::move(a));
  }
}

namespace checking {

namespace {

void error_once(Diagnostics& diags, ast::Loc loc, std::string message) {
  for (const Diagnostic& d : diags.all())
    if (d.loc.line == loc.line && d.loc.column == loc.column && d.message == message) return;
  diags.error(loc, std::move(message));
}

std::string signature(const ast::TypeTable& T, const ast::ArgFunction& f) {
  std::string s = f.name + "(";
  for (std::size_t i = 0; i < f.params.size(); ++i)
    s += (i ? ", " : "") + T.name(f.params[i].type) + " " + f.params[i].name;
  return s + ")";
}

bool same_params(const ast::ArgFunction& a, const ast::ArgFunction& b) {
  if (a.params.size() != b.params.size()) return false;
  for (std::size_t i = 0; i < a.params.size(); ++i) {
    const ast::ArgParam& x = a.params[i];
    const ast::ArgParam& y = b.params[i];
    if (x.name != y.name || x.type != y.type || x.position != y.position ||
        x.position2 != y.position2)
      return false;
  }
  return true;
}

// The functions of the action's probes, all with one parameter list; null after an error.
const ast::ArgFunction* action_function(const ast::Program& program, Diagnostics& diags,
                                        const ast::Action& action, ast::Loc at) {
  const ast::ArgFunction* first = nullptr;
  for (const ast::AttachPoint& p : action.probes) {
    if (p.probe.kind != Probe::Kind::uprobe) {
      error_once(diags, at,
                 "The args builtin can only be used with tracepoint/kfunc/uprobe probes (" +
                     std::string(probe_kind_name(p.probe.kind)) + " used here)" +
                     (p.probe.kind == Probe::Kind::uretprobe
                          ? ": the registers that held the parameters are reused by the "
                            "return; save what you need in the uprobe (@x[tid] = args.NAME)"
                          : ""));
      return nullptr;
    }
    if (p.function.empty()) {
      error_once(diags, at,
                 "args needs the probe to name a function (" + p.probe.text +
                     " names an address): write MODULE:FUNCTION");
      return nullptr;
    }
    const std::string key = p.module + "\t" + p.function;
    if (auto e = program.facts.errors.find(key); e != program.facts.errors.end()) {
      error_once(diags, at, e->second);
      return nullptr;
    }
    bool any = false;
    for (const ast::ArgFunction& f : program.facts.functions) {
      if (f.module != p.module || f.pattern != p.function) continue;
      any = true;
      if (!first) {
        first = &f;
      } else if (!same_params(*first, f)) {
        error_once(diags, p.loc,
                   "Probe has attach points with mixed arguments: " +
                       signature(program.types, *first) + " and " + signature(program.types, f) +
                       " (args needs one parameter list: split the probes into actions of "
                       "their own)");
        return nullptr;
      }
    }
    if (!any) {
      error_once(diags, at,
                 "no parameters are known for " + p.probe.text +
                     ": args reads them from DWARF in the hotprobe command (hotprobe run, "
                     "hotprobe attach)");
      return nullptr;
    }
  }
  return first;
}

ast::ExprPtr make(Expr::Kind kind, ast::Loc loc) {
  auto e = std::make_unique<Expr>();
  e->kind = kind;
  e->loc = loc;
  return e;
}

// The builtin that reads a parameter at the function's entry: "argN" for register N,
// "sargN" for a stack slot (where "rsp+8+8N", N up to 9); empty for any other place.
std::string entry_builtin(const ast::ArgParam& p) {
  if (p.position >= 0) return "arg" + std::to_string(p.position);
  if (!p.where.starts_with("rsp+")) return {};
  const long off = std::strtol(p.where.c_str() + 4, nullptr, 10);
  if (off < 8 || off % 8 != 0 || (off - 8) / 8 > 9) return {};
  return "sarg" + std::to_string((off - 8) / 8);
}

// `e` becomes (type)(READ >> shift), READ the builtin `reg` (argN, sargN).
void become_register_read(Expr& e, int type, const std::string& reg_name, int shift) {
  ast::ExprPtr reg = make(Expr::Kind::builtin, e.loc);
  reg->name = reg_name;
  if (shift) {
    ast::ExprPtr amount = make(Expr::Kind::integer, e.loc);
    amount->value = shift;
    ast::ExprPtr sh = make(Expr::Kind::binary, e.loc);
    sh->binary = ast::BinaryOp::shr;
    sh->args.push_back(std::move(reg));
    sh->args.push_back(std::move(amount));
    sh->height = 2;
    reg = std::move(sh);
  }
  std::vector<ast::ExprPtr> old = std::move(e.args);
  e.args.clear();
  e.kind = Expr::Kind::cast;
  e.cast_type = type;
  e.args.push_back(std::move(reg));
  e.height = e.args[0]->height + 1;
  e.arrow = false;
}

}  // namespace

bool rewrite_args_field(ast::Program& program, Diagnostics& diags, const ast::Action& action,
                        Expr& e) {
  const bool nested = !is_args(*e.args[0]);
  Expr& pe = nested ? *e.args[0] : e;  // args.NAME
  const ast::ArgFunction* fn = action_function(program, diags, action, pe.args[0]->loc);
  if (!fn) return false;
  const ast::TypeTable& T = program.types;
  const ast::ArgParam* param = nullptr;
  std::vector<std::string_view> names;
  for (const ast::ArgParam& p : fn->params) {
    names.push_back(p.name);
    if (p.name == pe.name) param = &p;
  }
  if (!param) {
    error_once(diags, pe.loc,
               "Can't find function parameter " + pe.name + " of " + signature(T, *fn) +
                   did_you_mean(pe.name, names));
    return false;
  }
  const CType& c = T.at(param->type);
  const std::string slot = entry_builtin(*param);
  if (param->position < 0 && !slot.empty() && !nested && T.size_of(param->type) <= 8 &&
      (c.kind == CType::Kind::integer || c.kind == CType::Kind::pointer)) {
    become_register_read(e, param->type, slot, 0);  // on the stack: its 8-byte slot
    return true;
  }
  if (param->position < 0) {
    const bool stack = param->where.starts_with("rsp");
    error_once(diags, pe.loc,
               "parameter '" + param->name + "' (" + T.name(param->type) + ") of " + fn->name +
                   (stack ? " is passed on the stack (" + param->where +
                                "): args reads parameters passed in registers (the first six "
                                "integers or pointers, structs of integers up to 16 bytes)"
                          : " is passed in " + param->where +
                                ", a floating-point register: hotprobe, as bpftrace, reads "
                                "no floating-point values"));
    return false;
  }
  if (c.kind == CType::Kind::integer || c.kind == CType::Kind::pointer) {
    if (nested) return true;  // args.p.x: the checker says what is wrong with `.` on it
    become_register_read(e, param->type, "arg" + std::to_string(param->position), 0);
    return true;
  }
  if (c.kind == CType::Kind::record && nested) {
    std::uint32_t off = 0;
    const ast::Field* f = T.field(c.record, e.name, off);
    const std::uint32_t size = f ? T.size_of(f->type) : 0;
    if (f && !f->bit_width &&
        (T.at(f->type).kind == CType::Kind::integer ||
         T.at(f->type).kind == CType::Kind::pointer) &&
        off / 8 == (off + size - 1) / 8 && (off < 8 || param->position2 >= 0)) {
      become_register_read(e, f->type,
                           "arg" + std::to_string(off < 8 ? param->position : param->position2),
                           static_cast<int>(off % 8 * 8));
      return true;
    }
    if (!f) {
      std::vector<std::string_view> fields;
      for (const ast::Field& g : T.records[static_cast<std::size_t>(c.record)].fields)
        fields.push_back(g.name);
      error_once(diags, e.loc,
                 "'" + T.name(param->type) + "' has no field named '" + e.name + "'" +
                     did_you_mean(e.name, fields));
      return false;
    }
  }
  error_once(diags, nested ? e.loc : pe.loc,
             "parameter '" + param->name + "' is a " + T.name(param->type) +
                 " passed by value in " + param->where +
                 ": args reads its integer and pointer fields (args." + param->name +
                 ".FIELD), not the whole struct, nested structs or bit fields");
  return false;
}

int rewrite_args_record(ast::Program& program, Diagnostics& diags, const ast::Action& action,
                        Expr& e) {
  const ast::ArgFunction* fn = action_function(program, diags, action, e.loc);
  if (!fn) return -1;
  ast::TypeTable& T = program.types;
  if (fn->params.empty()) {
    error_once(diags, e.loc,
               fn->name +
                   " takes no parameters: its args has nothing to copy (read "
                   "registers with argN if the debug information is wrong)");
    return -1;
  }
  ast::Record rec;
  rec.name = "struct " + fn->name + "_args";
  rec.complete = true;
  rec.current_form = true;
  std::vector<ast::ExprPtr> parts;
  auto part = [&](const std::string& reg, std::uint32_t offset) {
    ast::ExprPtr r = make(Expr::Kind::builtin, e.loc);
    r->name = reg;
    ast::ExprPtr c = make(Expr::Kind::cast, e.loc);
    c->cast_type = T.integer(8, false);
    c->args.push_back(std::move(r));
    c->height = 2;
    c->value = offset;
    parts.push_back(std::move(c));
  };
  for (const ast::ArgParam& p : fn->params) {
    const std::uint32_t size = T.size_of(p.type);
    const std::string slot = entry_builtin(p);
    const bool two = p.position >= 0 && p.position2 >= 0;
    if (slot.empty() || size == 0 || size > (two ? 16u : 8u)) {
      error_once(diags, e.loc,
                 "args of " + fn->name + " holds parameter '" + p.name + "' (" + T.name(p.type) +
                     ", in " + p.where +
                     "), which hotprobe cannot copy: the whole of args is the parameters passed "
                     "in registers or in 8-byte stack slots; read the others by name "
                     "(args.NAME)");
      return -1;
    }
    part(slot, rec.size);
    if (two && size > 8) part("arg" + std::to_string(p.position2), rec.size + 8);
    rec.fields.push_back(ast::Field{p.name, p.type, rec.size, 0, 0});
    rec.size += size;
  }
  e.args = std::move(parts);
  e.height = 3;
  return T.made_record(std::move(rec));  // args read twice, a clone: the same type
}

}  // namespace checking
}  // namespace hotprobe::script

namespace hotprobe::script::checking {

ast::ExprPtr clone(const Expr& e) {
  auto c = std::make_unique<Expr>();
  c->kind = e.kind;
  c->loc = e.loc;
  c->value = e.value;
  c->text = e.text;
  c->name = e.name;
  c->builtin = e.builtin;
  c->unary = e.unary;
  c->binary = e.binary;
  c->func = e.func;
  c->increment = e.increment;
  c->prefix = e.prefix;
  c->format = e.format;
  c->height = e.height;
  c->cast_type = e.cast_type;
  c->arrow = e.arrow;
  c->type = e.type;
  c->str_size = e.str_size;
  c->map_id = e.map_id;
  c->slot = e.slot;
  c->ctype = e.ctype;
  for (const ast::ExprPtr& a : e.args)
    c->args.push_back(a ? clone(*a) : nullptr);
  return c;
}

namespace {

bool has_effects(const Expr& e) {
  if (e.kind == Expr::Kind::call || e.kind == Expr::Kind::incdec) return true;
  return std::any_of(e.args.begin(), e.args.end(),
                     [](const ast::ExprPtr& a) { return a && has_effects(*a); });
}

// The printf format and values that print a record as bpftrace prints it.
struct RecordPrinter {
  const ast::TypeTable& T;
  const Expr& base;
  std::string format;
  std::vector<ast::ExprPtr> values;
  std::size_t max_values;

  struct Step {
    std::string field;  // empty: index
    std::int64_t index = 0;
  };

  ast::ExprPtr leaf(const std::vector<Step>& path) const {
    ast::ExprPtr e = clone(base);
    for (const Step& s : path) {
      ast::ExprPtr n = std::make_unique<Expr>();
      n->loc = base.loc;
      if (s.field.empty()) {
        n->kind = Expr::Kind::index;
        ast::ExprPtr i = std::make_unique<Expr>();
        i->kind = Expr::Kind::integer;
        i->loc = base.loc;
        i->value = s.index;
        n->height = e->height + 1;
        n->args.push_back(std::move(e));
        n->args.push_back(std::move(i));
      } else {
        n->kind = Expr::Kind::field;
        n->name = s.field;
        n->height = e->height + 1;
        n->args.push_back(std::move(e));
      }
      e = std::move(n);
    }
    return e;
  }

  void put(const char* conv, std::vector<Step>& path) {
    format += conv;
    values.push_back(leaf(path));
  }

  // False when it needs more than max_values values.
  bool value(int t, std::vector<Step>& path, int depth) {
    if (values.size() > max_values || depth > 8) return false;
    const CType& c = T.at(t);
    switch (c.kind) {
      case CType::Kind::integer:
        put(c.is_signed ? "%ld" : "%lu", path);
        return true;
      case CType::Kind::pointer:
        put("%lu", path);
        return true;
      case CType::Kind::array: {
        const CType& in = T.at(c.inner);
        if (in.kind == CType::Kind::integer && in.size == 1) {
          put("%s", path);
          return true;
        }
        format += "[";
        for (std::uint32_t i = 0; i < c.count; ++i) {
          if (i) format += ",";
          path.push_back(Step{"", i});
          const bool ok = value(c.inner, path, depth + 1);
          path.pop_back();
          if (!ok) return false;
        }
        format += "]";
        return true;
      }
      case CType::Kind::record: {
        format += "{ ";
        bool first = true;
        if (!fields(c.record, path, depth, first)) return false;
        format += first ? "}" : " }";
        return true;
      }
      case CType::Kind::void_:
        return true;
    }
    return true;
  }

  // The fields of record `rec`, those of anonymous members in line.
  bool fields(int rec, std::vector<Step>& path, int depth, bool& first) {
    for (const ast::Field& f : T.records[static_cast<std::size_t>(rec)].fields) {
      if (f.name.empty()) {
        if (T.at(f.type).kind == CType::Kind::record &&
            !fields(T.at(f.type).record, path, depth + 1, first))
          return false;
        continue;
      }
      format += first ? "." : ", .";
      first = false;
      format += f.name + " = ";
      path.push_back(Step{f.name, 0});
      const bool ok = value(f.type, path, depth + 1);
      path.pop_back();
      if (!ok) return false;
    }
    return true;
  }
};

}  // namespace

bool rewrite_print_record(ast::Program& program, Diagnostics& diags, Expr& call, int type) {
  Expr& arg = *call.args[0];
  if (has_effects(arg)) {
    diags.error(arg.loc,
                "print() of a struct reads its argument once per field: write it without calls "
                "or ++/-- (assign the pointer to a $variable first)");
    return false;
  }
  RecordPrinter p{program.types, arg, {}, {}, ast::kMaxPrintfArgs - 1};
  std::vector<RecordPrinter::Step> path;
  if (!p.value(type, path, 0)) {
    diags.error(arg.loc, "print() of '" + program.types.name(type) + "': it has more than " +
                             std::to_string(ast::kMaxPrintfArgs - 1) +
                             " values (fields and array elements) or is nested more than 8 "
                             "deep; print its parts");
    return false;
  }
  ast::ExprPtr fmt = std::make_unique<Expr>();
  fmt->kind = Expr::Kind::string;
  fmt->loc = arg.loc;
  fmt->text = p.format + "\n";
  int height = 1;
  call.args.clear();
  call.args.push_back(std::move(fmt));
  for (ast::ExprPtr& v : p.values) {
    height = std::max(height, v->height);
    call.args.push_back(std::move(v));
  }
  call.name = "printf";
  call.height = height + 1;
  return true;
}

}  // namespace hotprobe::script::checking
