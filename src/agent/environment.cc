// The agent's edits of the program's environment (session.h: env_value, env_remove,
// env_set) and the agent's own part of LD_PRELOAD.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "agent/session.h"

extern char** environ;

namespace hp::agent {

namespace {
bool env_entry_is(const char* entry, const char* name, std::size_t n) noexcept {
  return std::strncmp(entry, name, n) == 0 && entry[n] == '=';
}
}  // namespace

const char* env_value(const char* name) noexcept {
  const std::size_t n = std::strlen(name);
  for (char** e = environ; e && *e; ++e)
    if (env_entry_is(*e, name, n)) return *e + n + 1;
  return nullptr;
}

void env_remove(const char* name) noexcept {
  if (!environ) return;
  const std::size_t n = std::strlen(name);
  char** out = environ;
  for (char** e = environ; *e; ++e)
    if (!env_entry_is(*e, name, n)) *out++ = *e;
  *out = nullptr;
}

void env_set(const char* name, const char* value) {
  // Never freed: the program may keep the pointer (getenv) for as long as it runs.
  char* entry = ::strdup((std::string(name) + "=" + value).c_str());
  if (!entry) return;
  const std::size_t n = std::strlen(name);
  std::size_t count = 0;
  for (char** e = environ; e && *e; ++e, ++count) {
    if (env_entry_is(*e, name, n)) {
      *e = entry;
      return;
    }
  }
  // Appended: a new array (the old one may be the initial one, on the stack), never freed.
  auto** grown = static_cast<char**>(std::calloc(count + 2, sizeof(char*)));
  if (!grown) return;
  for (std::size_t i = 0; i < count; ++i)
    grown[i] = environ[i];
  grown[count] = entry;
  environ = grown;
}

namespace {
std::string* g_agent_preload = nullptr;  // set once, before any session starts
// Constant-initialized: set by init_once.cc before the agent's static initializers run.
std::atomic<bool> g_started_early{false};
}  // namespace

void note_started_early() noexcept {
  g_started_early.store(true, std::memory_order_release);
}

bool started_early() noexcept {
  return g_started_early.load(std::memory_order_acquire);
}

void set_agent_preload(std::string_view preload) {
  if (!g_agent_preload) g_agent_preload = new std::string(preload);
}

const std::string* agent_preload() {
  return g_agent_preload;
}

namespace {
std::string* g_rendezvous = nullptr;  // set once, before any session starts
}  // namespace

void set_rendezvous(std::string_view name) {
  if (!g_rendezvous) g_rendezvous = new std::string(name);
}

const std::string* rendezvous() {
  return g_rendezvous;
}

}  // namespace hp::agent
