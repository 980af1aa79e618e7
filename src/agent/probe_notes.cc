// What a session says about its probes beyond the engine's own errors: the name it
// probably meant when a target was not found (render_attach_error), and the targets whose
// module never loaded in the process (never_placed), said at the end so that an empty
// output is never a silent one (docs/design/agent.md, "What is not traced is said").
#include <link.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "agent/session.h"
#include "hotprobe/symbols.h"
#include "script/diag.h"

namespace hp::agent {

using hotprobe::Errc;
using hotprobe::Error;
namespace script = hotprobe::script;

namespace {

// A loaded module's short name close to `name` ("libcc" -> "libc"), or empty.
std::string suggest_module(std::string_view name) {
  std::vector<std::string> shorts;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* out) {
        std::string_view path = info->dlpi_name ? info->dlpi_name : "";
        auto base = path.substr(path.rfind('/') + 1);
        if (!base.empty()) {
          static_cast<std::vector<std::string>*>(out)->emplace_back(
              base.substr(0, base.find_first_of(".-")));
        }
        return 0;
      },
      &shorts);
  std::vector<std::string_view> names(shorts.begin(), shorts.end());
  return std::string(script::closest(name, names));
}

// "module:symbol" with no glob: the closest symbol of that module, or empty.
std::string suggest(std::string_view target) {
  auto colon = target.rfind(':');
  if (colon == std::string_view::npos) return {};
  std::string_view sym = target.substr(colon + 1);
  if (sym.empty() || sym.find_first_of("*?[+") != std::string_view::npos) return {};
  auto all = hotprobe::resolve_functions(fmt::format("{}:*", target.substr(0, colon)));
  if (!all) return {};
  std::vector<std::string_view> names;
  for (const auto& f : *all)
    names.push_back(f.name);
  return std::string(script::closest(sym, names));
}

}  // namespace

std::string Session::render_attach_error(std::size_t probe, const Error& e) const {
  const auto& p = program_->probes()[probe];
  std::string message = e.message();
  if (e.code() == Errc::not_found && message.find("did you mean") == std::string::npos) {
    const std::string& target = p.target;
    std::string_view module = std::string_view(target).substr(0, target.find(':'));
    if (auto best = suggest(target); !best.empty()) {
      message += fmt::format(" (did you mean '{}'?)", best);
    } else if (module.find('/') == std::string_view::npos && !module.empty()) {
      if (auto m = suggest_module(module); !m.empty() && m != module)
        message += fmt::format(" (did you mean '{}'?)", m);
    }
  }
  script::Diagnostic d;
  d.loc.line = p.line;
  d.loc.column = p.column;
  d.loc.length = static_cast<int>(std::max<std::size_t>(1, p.text.size()));
  d.message = std::move(message);
  return script::render(d, source_, filename_);
}

namespace {
// The loaded modules' real paths (the executable's first). dl_iterate_phdr, not
// /proc/self/maps: the agent opens no descriptor of its own while the program runs (one
// the program's close-every-descriptor loop could take back).
std::vector<std::string> loaded_modules() {
  std::vector<std::string> out;
  char buf[PATH_MAX];
  if (::realpath("/proc/self/exe", buf)) out.emplace_back(buf);
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* p) {
        auto* v = static_cast<std::vector<std::string>*>(p);
        char real[PATH_MAX];
        if (info->dlpi_name && *info->dlpi_name && ::realpath(info->dlpi_name, real))
          v->emplace_back(real);
        return 0;
      },
      &out);
  return out;
}
}  // namespace

std::vector<std::string> Session::placed_targets() const {
  const std::vector<std::string> never = never_placed();
  std::vector<std::string> out;
  for (const auto& p : program_->probes()) {
    if (p.kind != script::Probe::Kind::uprobe && p.kind != script::Probe::Kind::uretprobe) continue;
    if (std::find(never.begin(), never.end(), p.target) != never.end()) continue;
    if (std::find(out.begin(), out.end(), p.target) == out.end()) out.push_back(p.target);
  }
  return out;
}

std::vector<std::string> Session::never_placed() const {
  std::vector<std::string> out;
  std::vector<std::string> loaded;
  for (const auto& p : program_->probes()) {
    if (p.kind != script::Probe::Kind::uprobe && p.kind != script::Probe::Kind::uretprobe) continue;
    const std::string_view target = p.target;
    // MODULE:usdt:PROVIDER:NAME and MODULE:fileoff:0xOFF have colons after MODULE.
    auto colon = target.rfind(':');
    for (std::string_view form : {":usdt:", ":fileoff:"})
      if (auto at = target.find(form); at != std::string_view::npos) colon = at;
    if (colon == std::string_view::npos || colon == 0) continue;  // the executable's own
    const std::string module(target.substr(0, colon));
    if (module.find_first_of("*?[") != std::string::npos) continue;
    if (loaded.empty()) loaded = loaded_modules();
    bool found = false;
    if (module.find('/') != std::string::npos) {
      char real[PATH_MAX];
      const std::string want = ::realpath(module.c_str(), real) ? real : module;
      found = std::find(loaded.begin(), loaded.end(), want) != loaded.end();
    } else {  // a library name: libc, libc.so.6, c
      for (const auto& l : loaded) {
        std::string_view base = std::string_view(l).substr(l.rfind('/') + 1);
        for (const std::string& n : {module, "lib" + module}) {
          found = found || base == n ||
                  (base.starts_with(n) && base.size() > n.size() &&
                   (base[n.size()] == '.' || base[n.size()] == '-'));
        }
      }
    }
    if (!found && std::find(out.begin(), out.end(), p.target) == out.end()) out.push_back(p.target);
  }
  return out;
}

}  // namespace hp::agent
