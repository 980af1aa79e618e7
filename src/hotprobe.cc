// The public library's own translation unit: thin entry points over the layers.
#include "hotprobe/hotprobe.h"
#include "hotprobe/probe.h"

#include <utility>

#include "base/compiler.h"

namespace hotprobe {

const char* version() noexcept {
  return "0.1.0";
}

namespace {
constexpr std::pair<Scheme, std::string_view> kSchemes[] = {
    {Scheme::tasks_trace, "tasks-trace"}, {Scheme::srcu, "srcu"},
    {Scheme::srcu_fast, "srcu-fast"},     {Scheme::percpu_rwsem, "percpu-rwsem"},
    {Scheme::refcount, "refcount"},       {Scheme::rwlock, "rwlock"},
};
}  // namespace

std::string_view to_string(Scheme s) noexcept {
  for (const auto& [v, name] : kSchemes) {
    if (v == s) return name;
  }
  return "unknown";
}

Result<Scheme> parse_scheme(std::string_view name) {
  std::string names;
  for (const auto& [v, n] : kSchemes) {
    if (n == name) return v;
    names += names.empty() ? "" : ", ";
    names += n;
  }
  return Error(Errc::invalid_argument,
               "unknown scheme '" + std::string(name) + "' (schemes: " + names + ")");
}

}  // namespace hotprobe
