// `hotprobe list`: the probe-able functions and USDT probes of a module, in bpftrace's -l
// form.
//
//   hotprobe list MODULE [GLOB]              uprobe:PATH:FUNC lines
//   hotprobe list 'uprobe:PATH:GLOB'         the same, as bpftrace -l takes it (also u:,
//                                            uretprobe:, ur:)
//   hotprobe list 'usdt:PATH:*'              usdt:PATH:PROVIDER:NAME lines; also
//                                            usdt:PATH:NAME and usdt:PATH:PROVIDER:NAME
// Every field takes fnmatch(3) wildcards, PATH too (each matching ELF file). PATH may be a
// program in PATH or a library's short name (libc). list(module, glob, verbose, pid) and
// list_probes(pattern, verbose, pid) add bpftrace's -v (the parameters of each function
// from DWARF, as bpftrace -lv prints them) and -p PID (PATH then matches the files the
// process maps, and may be left out or '*'). A pattern that matches nothing is an error
// (exit status 1) that names the file.
//
// Fragments of functions (NAME.cold, NAME.cold.N: the unlikely paths GCC moves out of
// line) are not functions and are not listed, as globs in probe targets skip them; a
// pattern that names them ("hotprobe list ./prog '*.cold*'") lists them, each marked
// " (fragment)": an entry probe there is an instruction probe, a return probe is refused.
// A file with no function to list (stripped, nothing exported) is an error that says
// what would help, exit status 1.
#include <fnmatch.h>
#include <glob.h>
#include <link.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "cli/cli.h"
#include "elf/dwarf.h"
#include "elf/modules.h"
#include "elf/usdt.h"
#include "hotprobe/symbols.h"

namespace hp::cli {
namespace {

bool is_file(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// "libc" names libc.so.6; "libssl.so" libssl.so.3; "libz.so.1" itself; "z" libz.so.1;
// "foo" libfoo.so.
bool library_matches(std::string_view file, std::string_view name) {
  auto try_one = [&](std::string_view n) {
    if (file == n) return true;
    if (file.size() >= n.size() + 3 && file.substr(0, n.size()) == n) {
      std::string_view rest = file.substr(n.size());
      return rest.starts_with(".so") || (n.ends_with(".so") && rest.starts_with("."));
    }
    return false;
  };
  if (try_one(name)) return true;
  return !name.starts_with("lib") && try_one(fmt::format("lib{}", name));
}

// NAME.cold or NAME.cold.N (the rule of hp::elf::is_fragment_name, which this program
// does not link).
bool is_fragment(std::string_view name) {
  name = name.substr(0, name.find('@'));
  for (auto pos = name.find(".cold"); pos != std::string_view::npos;
       pos = name.find(".cold", pos + 1)) {
    std::string_view rest = name.substr(pos + 5);
    if (pos > 0 &&
        (rest.empty() || (rest.size() > 1 && rest[0] == '.' &&
                          rest.find_first_not_of("0123456789", 1) == std::string_view::npos)))
      return true;
  }
  return false;
}

std::string base_name(std::string_view path) {
  auto slash = path.rfind('/');
  return std::string(slash == std::string_view::npos ? path : path.substr(slash + 1));
}

// The libraries loaded in hotprobe itself (libc, libstdc++, ...), as the loader found them.
std::string find_loaded(const std::string& name) {
  struct Ctx {
    const std::string* name;
    std::string found;
  } ctx{&name, {}};
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* p) {
        auto* c = static_cast<Ctx*>(p);
        if (info->dlpi_name && *info->dlpi_name && c->found.empty() &&
            library_matches(base_name(info->dlpi_name), *c->name))
          c->found = info->dlpi_name;
        return 0;
      },
      &ctx);
  return ctx.found;
}

// The loader's cache (ldconfig -p), x86-64 entries.
std::string find_in_ld_cache(const std::string& name) {
  FILE* f = ::popen("/sbin/ldconfig -p 2>/dev/null", "r");
  if (!f) return {};
  std::string found;
  char line[4096];
  while (std::fgets(line, sizeof line, f)) {
    std::string_view l = line;
    while (!l.empty() && (l.back() == '\n' || l.back() == ' '))
      l.remove_suffix(1);
    auto arrow = l.find(" => ");
    auto paren = l.find(" (");
    if (arrow == std::string_view::npos || paren == std::string_view::npos) continue;
    std::string_view soname = l.substr(0, paren);
    while (!soname.empty() && (soname.front() == '\t' || soname.front() == ' '))
      soname.remove_prefix(1);
    if (l.substr(paren, arrow - paren).find("x86-64") == std::string_view::npos) continue;
    if (found.empty() && library_matches(soname, name)) found = l.substr(arrow + 4);
  }
  ::pclose(f);
  return found;
}

}  // namespace

std::string find_in_path(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  std::string_view dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  while (true) {
    auto colon = dirs.find(':');
    std::string dir(dirs.substr(0, colon));
    if (dir.empty()) dir = ".";
    std::string candidate = fmt::format("{}/{}", dir, name);
    if (is_file(candidate) && ::access(candidate.c_str(), X_OK) == 0) return candidate;
    if (colon == std::string_view::npos) break;
    dirs.remove_prefix(colon + 1);
  }
  return {};
}

namespace {

// A module as a user names it: a path, a program in PATH, a library's short name.
std::string module_path(const std::string& module) {
  if (module.find('/') != std::string::npos) return module;
  if (auto p = find_in_path(module); !p.empty()) return p;
  if (auto l = find_loaded(module); !l.empty()) return l;
  return find_in_ld_cache(module);
}

bool has_wildcard(std::string_view s) {
  return s.find_first_of("*?[") != std::string_view::npos;
}

bool glob_match(const std::string& pattern, const std::string& s) {
  return pattern.empty() || ::fnmatch(pattern.c_str(), s.c_str(), 0) == 0;
}

int fail(const std::string& message) {
  std::fprintf(stderr, "hotprobe list: %s\n", message.c_str());
  return kExitError;
}

enum class Kind { uprobe, usdt };

// A bpftrace -l pattern: TYPE:PATH:FUNC or usdt:PATH[:PROVIDER]:NAME.
struct Pattern {
  Kind kind = Kind::uprobe;
  std::string type;  // as printed: uprobe, uretprobe, usdt
  std::string path;  // empty: every module (with -p only)
  std::string provider;
  std::string name;
};

// The probe types a pattern may start with, bpftrace's short forms included.
bool probe_type(std::string_view word, Kind& kind, std::string& type) {
  if (word == "uprobe" || word == "u") {
    kind = Kind::uprobe;
    type = "uprobe";
  } else if (word == "uretprobe" || word == "ur") {
    kind = Kind::uprobe;
    type = "uretprobe";
  } else if (word == "usdt" || word == "U") {
    kind = Kind::usdt;
    type = "usdt";
  } else {
    return false;
  }
  return true;
}

constexpr const char* kForms =
    "hotprobe lists uprobe, uretprobe and usdt probes:\n"
    "  hotprobe list 'uprobe:/usr/bin/bash:read*'\n"
    "  hotprobe list 'usdt:/usr/bin/python3:*'          every probe of a file\n"
    "  hotprobe list 'usdt:/usr/bin/python3:python:*'   PROVIDER:NAME, wildcards in each "
    "field";

hotprobe::Result<Pattern> parse_pattern(const std::string& text, bool have_pid) {
  std::vector<std::string> fields;
  for (std::size_t pos = 0;;) {
    auto colon = text.find(':', pos);
    fields.push_back(text.substr(pos, colon - pos));
    if (colon == std::string::npos) break;
    pos = colon + 1;
  }
  Pattern p;
  if (!probe_type(fields[0], p.kind, p.type)) {
    return hotprobe::Error(
        hotprobe::Errc::invalid_argument,
        "'" + fields[0] + ":' probes are not listed here (" + text + "); " + kForms);
  }
  fields.erase(fields.begin());
  // A function name may hold colons (C++'s ns::f): everything after PATH is the name.
  if (p.kind == Kind::uprobe && fields.size() > 2) {
    for (std::size_t i = 2; i < fields.size(); ++i)
      fields[1] += ":" + fields[i];
    fields.resize(2);
  }
  if (fields.size() > 3) {
    return hotprobe::Error(hotprobe::Errc::invalid_argument,
                           "'" + text + "' has too many fields; " + kForms);
  }
  if (!fields.empty()) p.path = fields[0];
  if (p.kind == Kind::uprobe) {
    p.name = fields.size() == 2 ? fields[1] : "*";
  } else {
    p.provider = fields.size() == 3 ? fields[1] : "*";
    p.name = fields.size() >= 2 ? fields.back() : "*";
  }
  if (p.path == "*") p.path.clear();
  if (p.path.empty() && !have_pid) {
    return hotprobe::Error(hotprobe::Errc::invalid_argument,
                           "'" + text +
                               "' names no file: listing every file of the system would be "
                               "long and slow; name one (wildcards work: "
                               "'usdt:/usr/lib/*/libpython*:*')");
  }
  if (p.name.empty()) p.name = "*";
  if (p.provider.empty()) p.provider = "*";
  return p;
}

// A file to list: where to read it, and the path to print.
struct File {
  std::string read;
  std::string shown;
  std::shared_ptr<const hp::elf::ElfFile> elf;  // set when -p found it
};

// The modules of process `pid` whose path matches `path` (empty: all of them).
hotprobe::Result<std::vector<File>> process_files(int pid, const std::string& path) {
  auto mods = hp::elf::ModuleList::of_process(pid);
  if (!mods.ok()) return mods.error();
  std::vector<File> out;
  for (const hp::elf::Module& m : mods->modules()) {
    bool match = path.empty();
    if (!match && has_wildcard(path)) {
      match = glob_match(path, m.path);
    } else if (!match) {
      match = path.find('/') != std::string::npos ? m.path == path
                                                  : library_matches(std::string(m.name()), path);
    }
    if (!match) continue;
    auto elf = mods->elf(m);
    if (!elf.ok()) continue;
    out.push_back(File{mods->map_files_path(m), m.path, *elf});
  }
  if (out.empty()) {
    return hotprobe::Error(hotprobe::Errc::not_found,
                           "process " + std::to_string(pid) + " maps no file that matches '" +
                               (path.empty() ? "*" : path) + "' (see /proc/" + std::to_string(pid) +
                               "/maps)");
  }
  return out;
}

// The files a path names: a glob, a path, a program in PATH or a library's short name.
hotprobe::Result<std::vector<File>> disk_files(const std::string& path) {
  std::vector<File> out;
  if (has_wildcard(path)) {
    glob_t g{};
    if (::glob(path.c_str(), 0, nullptr, &g) == 0) {
      for (std::size_t i = 0; i < g.gl_pathc; ++i) {
        if (is_file(g.gl_pathv[i])) out.push_back(File{g.gl_pathv[i], g.gl_pathv[i], nullptr});
      }
    }
    ::globfree(&g);
    if (out.empty()) {
      return hotprobe::Error(hotprobe::Errc::not_found, "no file matches '" + path + "'");
    }
    return out;
  }
  const std::string found = module_path(path);
  if (found.empty()) {
    return hotprobe::Error(hotprobe::Errc::not_found,
                           "no program or library named '" + path +
                               "' (not in PATH, not known to the dynamic loader's cache); give "
                               "its path");
  }
  out.push_back(File{found, found, nullptr});
  return out;
}

// The names of the functions of `file` that match `glob`.
hotprobe::Result<std::vector<std::string>> function_names(const File& file,
                                                          const std::string& glob) {
  auto fns = hotprobe::list_functions(file.read, glob == "*" ? std::string() : glob);
  if (!fns) return fns.error();
  std::vector<std::string> names;
  names.reserve(fns->size());
  for (const auto& f : *fns)
    names.push_back(f.name);
  return names;
}

// `bpftrace -lv`'s parameter lines of `function` in `file`; a file without DWARF gets one
// warning on stderr and no lines.
class Params {
 public:
  std::string of(const File& file, const std::string& function) {
    auto [it, fresh] = info_.try_emplace(file.read);
    if (fresh) {
      auto dw = hp::elf::DwarfInfo::open(file.read);
      if (dw.ok()) {
        it->second = std::move(*dw);
      } else {
        std::fprintf(stderr, "hotprobe list: %s: the parameters are not shown\n",
                     dw.error().message().c_str());
      }
    }
    if (!it->second) return {};
    auto fn = it->second->function(function.substr(0, function.find('@')));
    return fn.ok() ? hp::elf::format_params(*fn) : std::string();
  }

 private:
  std::map<std::string, std::unique_ptr<hp::elf::DwarfInfo>> info_;
};

// `hotprobe list -v`'s lines of a USDT probe: its arguments' types as the note gives them
// ("    int32_t arg0"; bpftrace -lv prints none for usdt probes).
std::string usdt_params(const hp::elf::UsdtProbe& u) {
  std::string out;
  for (std::size_t i = 0; i < u.args.size(); i++) {
    const hp::elf::UsdtArg& a = u.args[i];
    const std::string type = a.is_float
                                 ? (a.size == 4 ? "float" : "double")
                                 : fmt::format("{}int{}_t", a.is_signed ? "" : "u", a.size * 8);
    out += fmt::format("    {} arg{}\n", type, i);
  }
  return out;
}

}  // namespace

namespace {

// The lines of pattern `p` go into `lines` (sorted, each once; value: -v's text). A pattern
// that matches nothing leaves `lines` as it was and returns the error to print.
std::optional<std::string> collect(const Pattern& p, bool verbose, int pid,
                                   std::map<std::string, std::string>& lines) {
  auto files = pid > 0 ? process_files(pid, p.path) : disk_files(p.path);
  if (!files.ok()) return files.error().message();
  const bool one_file = files->size() == 1;
  const std::size_t before = lines.size();
  Params params;
  std::string first_error;
  for (const File& f : *files) {
    if (p.kind == Kind::uprobe) {
      auto names = function_names(f, p.name);
      if (!names.ok()) {
        if (one_file) return names.error().message();
        continue;
      }
      for (const std::string& n : *names) {
        auto [it, fresh] = lines.try_emplace(
            fmt::format("{}:{}:{}{}", p.type, f.shown, n, is_fragment(n) ? " (fragment)" : ""));
        if (fresh && verbose) it->second = params.of(f, n);
      }
      continue;
    }
    auto elf = f.elf;
    if (!elf) {
      auto loaded = hp::elf::load_elf(f.read);
      if (!loaded.ok()) {
        if (one_file) return loaded.error().message();
        continue;
      }
      elf = *loaded;
    }
    // Through map_files (another mount namespace), failing that (no privilege) its path.
    auto probes = hp::elf::read_usdt(*elf, f.read);
    if (!probes.ok() && f.elf) probes = hp::elf::read_usdt(*elf);
    if (!probes.ok()) {
      if (one_file) return probes.error().message();
      if (first_error.empty()) first_error = probes.error().message();
      continue;
    }
    for (const hp::elf::UsdtProbe* u : hp::elf::find_usdt(*probes, p.provider, p.name)) {
      auto [it, fresh] =
          lines.try_emplace(fmt::format("usdt:{}:{}:{}", f.shown, u->provider, u->name));
      if (fresh && verbose) it->second = usdt_params(*u);
    }
  }
  if (lines.size() > before) return std::nullopt;
  if (!first_error.empty()) return first_error;
  const std::string where =
      one_file ? (*files)[0].shown : fmt::format("any of {} files", files->size());
  if (p.kind == Kind::usdt) {
    return fmt::format(
        "no USDT probe matches '{}:{}' in {} (probes come from <sys/sdt.h>'s "
        "DTRACE_PROBE/STAP_PROBE; `readelf -n FILE` shows a file's .note.stapsdt)",
        p.provider, p.name, where);
  }
  return fmt::format("no function matches '{}' in {} (`hotprobe list {}` lists them all)", p.name,
                     where, one_file ? (*files)[0].shown : p.path);
}

int print_lines(const std::map<std::string, std::string>& lines) {
  std::string out;
  for (const auto& [line, extra] : lines)
    out += line + "\n" + extra;
  std::fwrite(out.data(), 1, out.size(), stdout);
  return std::fflush(stdout) == 0 ? kExitOk : kExitError;
}

// Every pattern of `patterns` (one per probe type a pattern's type names), their lines
// together; an error only when none matches anything (the first one's).
int list_patterns(const std::vector<Pattern>& patterns, bool verbose, int pid) {
  std::map<std::string, std::string> lines;
  std::optional<std::string> first_error;
  for (const Pattern& p : patterns) {
    auto error = collect(p, verbose, pid, lines);
    if (error && !first_error) first_error = std::move(error);
  }
  if (lines.empty() && first_error) return fail(*first_error);
  return print_lines(lines);
}

int list_pattern(const Pattern& p, bool verbose, int pid) {
  return list_patterns({p}, verbose, pid);
}

}  // namespace

int list_probes(const std::string& pattern_text, bool verbose, int pid) {
  // A type with wildcards ('*:PATH:*', as bpftrace -l takes it): each type it matches.
  const std::string type = pattern_text.substr(0, pattern_text.find(':'));
  if (has_wildcard(type) && pattern_text.find(':') != std::string::npos) {
    std::vector<Pattern> patterns;
    for (const char* t : {"uprobe", "usdt"}) {
      if (::fnmatch(type.c_str(), t, 0) != 0) continue;
      auto p = parse_pattern(t + pattern_text.substr(type.size()), pid > 0);
      if (!p.ok()) return fail(p.error().message());
      patterns.push_back(std::move(*p));
    }
    if (patterns.empty()) {
      return fail("'" + type + ":' matches no probe type hotprobe lists (" + pattern_text + "); " +
                  kForms);
    }
    return list_patterns(patterns, verbose, pid);
  }
  auto pattern = parse_pattern(pattern_text, pid > 0);
  if (!pattern.ok()) return fail(pattern.error().message());
  return list_pattern(*pattern, verbose, pid);
}

int list(const std::string& module, const std::string& glob, bool verbose, int pid) {
  Kind kind;
  std::string type;
  const auto colon = module.find(':');
  // bpftrace's other probe types (kprobe:, tracepoint:, ...): refused by parse_pattern.
  const bool other_type = colon != std::string::npos &&
                          module.find_first_not_of("abcdefghijklmnopqrstuvwxyz_") == colon;
  if (colon != std::string::npos && (other_type || has_wildcard(module.substr(0, colon)) ||
                                     probe_type(module.substr(0, colon), kind, type))) {
    if (!glob.empty()) {
      return fail("'" + module + "' is a whole pattern; a GLOB after it has no place (put " +
                  "it in the pattern's last field)");
    }
    return list_probes(module, verbose, pid);
  }
  Pattern p;
  p.type = "uprobe";
  p.path = module == "*" ? "" : module;  // with -p, empty or '*' is every module
  p.name = glob.empty() ? "*" : glob;
  if (p.path.empty() && pid <= 0) return fail("name a module or program (or give -p PID)");
  if (p.path.empty() && glob.empty()) {
    // -p PID alone: every probe of every module, as bpftrace -l -p PID lists them.
    Pattern u = p;
    u.kind = Kind::usdt;
    u.type = "usdt";
    u.provider = "*";
    return list_patterns({p, u}, verbose, pid);
  }
  return list_pattern(p, verbose, pid);
}

int list(const std::string& module, const std::string& glob) {
  return list(module, glob, false, 0);
}

}  // namespace hp::cli
