// `hotprobe list`: the probe-able functions of one module, in bpftrace's -l form.
//
// Fragments of functions (NAME.cold, NAME.cold.N: the unlikely paths GCC moves out of
// line) are not functions and are not listed, as globs in probe targets skip them; a
// pattern that names them ("hotprobe list ./prog '*.cold*'") lists them, each marked
// " (fragment)": an entry probe there is an instruction probe, a return probe is refused.
// A file with no function to list (stripped, nothing exported) is an error that says
// what would help, exit status 1.
#include <link.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "cli/cli.h"
#include "hotprobe/symbols.h"

namespace hp::cli {
namespace {

bool is_file(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// "libc" names libc.so.6; "libssl.so" libssl.so.3; "libz.so.1" itself; "z" libz.so.1.
bool library_matches(std::string_view file, std::string_view name) {
  auto try_one = [&](std::string_view n) {
    if (file == n) return true;
    if (file.size() > n.size() + 3 && file.substr(0, n.size()) == n) {
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

int list(const std::string& module, const std::string& glob) {
  std::string path;
  if (module.find('/') != std::string::npos) {
    path = module;
  } else if (auto p = find_in_path(module); !p.empty()) {
    path = p;
  } else if (auto l = find_loaded(module); !l.empty()) {
    path = l;
  } else {
    path = find_in_ld_cache(module);
  }
  if (path.empty()) {
    std::fprintf(stderr,
                 "hotprobe list: no program or library named '%s' (not in PATH, not known to the "
                 "dynamic loader's cache); give its path\n",
                 module.c_str());
    return kExitError;
  }
  auto fns = hotprobe::list_functions(path, glob);
  if (!fns) {
    std::fprintf(stderr, "hotprobe list: %s\n", fns.error().message().c_str());
    return kExitError;
  }
  std::vector<std::string> names;
  names.reserve(fns->size());
  for (const auto& f : *fns)
    names.push_back(f.name);
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  std::string out;
  for (const auto& n : names)
    out += fmt::format("uprobe:{}:{}{}\n", path, n, is_fragment(n) ? " (fragment)" : "");
  std::fwrite(out.data(), 1, out.size(), stdout);
  return std::fflush(stdout) == 0 ? kExitOk : kExitError;
}

}  // namespace hp::cli
