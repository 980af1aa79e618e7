#include "cli/prepare.h"

#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "agent/protocol.h"
#include "elf/data_symbols.h"
#include "elf/dwarf.h"
#include "hotprobe/symbols.h"
#include "script/ast.h"
#include "script/check_args.h"
#include "script/run_misc.h"

namespace hp::cli {

namespace {

namespace agent = hp::agent;
namespace script = hotprobe::script;

std::string self_dir() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return ".";
  std::string p(buf, static_cast<std::size_t>(n));
  return p.substr(0, p.rfind('/'));
}

// The symbols uaddr("NAME") names in the uprobe modules of its actions, as lines the
// checker reads (script/run_misc.h, kUaddrPrefix): the agent reads no ELF file itself.
std::string uaddr_lines(const std::string& source, const std::string& filename) {
  if (source.find("uaddr") == std::string::npos) return {};
  auto program = script::parse(source, filename);
  if (!program) return {};  // the compile below reports it
  std::string lines;
  script::for_each_expr(*program, [&](script::ast::Action& a, script::ast::Expr& e) {
    if (e.kind != script::ast::Expr::Kind::call || e.name != "uaddr" || e.args.size() != 1 ||
        e.args[0]->kind != script::ast::Expr::Kind::string)
      return;
    for (const script::ast::AttachPoint& p : a.probes) {
      if (p.module.empty() || p.usdt) continue;
      const std::string head =
          std::string(script::kUaddrPrefix) + p.module + "\t" + e.args[0]->text + "\t";
      if (lines.find(head) != std::string::npos) continue;
      char real[PATH_MAX];
      std::string path = ::realpath(p.module.c_str(), real) ? real : p.module;
      if (path.find('/') == std::string::npos && !p.function.empty()) {
        // A short name (libc): the file hotprobe's own process maps for it, as the
        // probe's function resolves here.
        if (auto fns = hotprobe::resolve_functions(p.module + ":" + p.function);
            fns && !fns->empty())
          path = fns->front().module;
      }
      const auto sym = elf::find_symbol(path, e.args[0]->text);
      lines += script::uaddr_line(p.module, e.args[0]->text, sym ? sym->value : 0,
                                  sym ? sym->size : 0, path, sym.has_value());
    }
  });
  return lines;
}

// missing_probes = "warn" or "ignore": the uprobes whose function is not in their module,
// found here where the module is a file, are left out (a line the parser reads,
// script/run_misc.h), with a warning for "warn". With "error" (bpftrace's default) the
// agent reports a missing function, with its suggestions, and attaches nothing.
void skip_missing_probes(const char* cmd, std::string& source, const std::string& filename) {
  const std::string mode = script::script_settings(source).missing_probes;
  if (mode != "warn" && mode != "ignore") return;
  auto program = script::parse(source, filename);
  if (!program) return;  // the compile reports it
  for (const script::ast::Action& a : program->actions) {
    for (const script::ast::AttachPoint& p : a.probes) {
      const bool user = p.probe.kind == script::Probe::Kind::uprobe ||
                        p.probe.kind == script::Probe::Kind::uretprobe;
      // Only a probe hotprobe can look up here as the agent will: a file named by its
      // path, one function (a glob or an address is the agent's to resolve).
      if (!user || p.usdt || p.is_glob || p.is_address || p.function.empty() ||
          p.module.find('/') == std::string::npos || ::access(p.module.c_str(), R_OK) != 0)
        continue;
      // The engine's own resolution of the target (fragments, versions, offsets).
      if (auto fns = hotprobe::resolve_functions(p.probe.target); fns && !fns->empty()) continue;
      if (mode == "warn")
        std::fprintf(stderr, "hotprobe %s: WARNING: No matches for uprobe %s:%s. Skipping.\n", cmd,
                     p.module.c_str(), p.function.c_str());
      source += std::string(script::kSkipProbePrefix) + p.probe.text + "\n";
    }
  }
}

}  // namespace

std::string find_agent() {
  if (const char* env = std::getenv("HOTPROBE_AGENT"); env && *env) return env;
  std::string dir = self_dir();
  for (const std::string& c :
       {dir + "/libhotprobe_agent.so", dir + "/" + HOTPROBE_AGENT_FROM_BIN}) {
    if (::access(c.c_str(), R_OK) == 0) return c;
  }
  return {};
}

std::optional<LoadedScript> load_script(const char* cmd, const std::string& text,
                                        const std::string& file, const std::string& format,
                                        const std::vector<std::string>& params, bool unsafe) {
  LoadedScript loaded;
  std::string& source = loaded.source;
  std::string& filename = loaded.filename;
  script::CompileOptions& copts = loaded.copts;
  copts.params = params;
  copts.unsafe = unsafe;
  source = text;
  filename = "-e";
  if (!file.empty()) {
    std::ifstream in(file);
    if (!in) {
      std::fprintf(stderr, "hotprobe %s: cannot read the script file '%s': %s\n", cmd, file.c_str(),
                   std::strerror(errno));
      return std::nullopt;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    source = ss.str();
    filename = file;
  }
  if (source.size() > agent::kMaxMessage * 3) {
    std::fprintf(stderr, "hotprobe %s: the script is larger than %zu bytes\n", cmd,
                 agent::kMaxMessage * 3);
    return std::nullopt;
  }
  // bpftrace's settings in the environment, over the script's config (run_misc.h).
  if (const char* mode = std::getenv("BPFTRACE_STACK_MODE"); mode && *mode) {
    const std::string m = mode;
    if (m != "bpftrace" && m != "perf" && m != "raw" && m != "build_id") {
      std::fprintf(stderr,
                   "hotprobe %s: BPFTRACE_STACK_MODE is bpftrace, perf, raw or build_id ('%s' "
                   "given): "
                   "set one of them, or unset it\n",
                   cmd, m.c_str());
      return std::nullopt;
    }
    source += script::env_settings_line("stack_mode", m);
  }
  // The command names the source places of stack frames in the text it receives
  // (show_debug_info: the agent has no DWARF reader; script/symbolize.h).
  source += script::env_settings_line("source_places", "reader");
  if (const char* len = std::getenv("BPFTRACE_MAX_STRLEN");
      len && *len && std::string_view(len) != "64") {
    std::fprintf(stderr,
                 "hotprobe %s: BPFTRACE_MAX_STRLEN is %s, but hotprobe's strings are 64 bytes "
                 "(bpftrace's default): unset it, or use str(p, N) for shorter reads\n",
                 cmd, len);
    return std::nullopt;
  }
  // The parameters `args` reads and the headers #include names travel inside the text
  // the agent compiles (script/check_args.h): the agent reads no DWARF or files.
  skip_missing_probes(cmd, source, filename);
  source = script::with_type_facts(source, filename, &elf::dwarf_type_facts);
  // uaddr()'s symbols, parsed with the types the facts give, as lines of the script part.
  if (const std::string lines = uaddr_lines(source, filename); !lines.empty()) {
    const std::size_t at = source.find(script::kTypeFactsMarker);
    source.insert(at == std::string::npos ? source.size() : at, lines);
  }
  if (source.size() > agent::kMaxMessage * 3) {
    std::fprintf(stderr,
                 "hotprobe %s: the script with the types of its headers and of the functions "
                 "whose args it reads is larger than %zu bytes: include less, or read "
                 "fewer functions' args\n",
                 cmd, agent::kMaxMessage * 3);
    return std::nullopt;
  }
  copts.filename = filename;
  copts.format = format == "json" ? script::OutputFormat::json : script::OutputFormat::text;
  if (auto prog = script::Program::compile(source, copts); !prog) {
    std::string m = prog.error().message();
    if (!m.empty() && m.back() != '\n') m += '\n';
    std::fputs(m.c_str(), stderr);
    return std::nullopt;
  }
  return loaded;
}

}  // namespace hp::cli
