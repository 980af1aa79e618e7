#include "base/assert.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace hp::detail {

// Async-signal-safe: only write(2) and abort(), so it may fire inside a signal handler.
void die(const char* file, int line, const char* what, const char* msg) noexcept {
  char buf[512];
  int n = std::snprintf(buf, sizeof buf, "hotprobe: %s:%d: %s%s%s\n", file, line, what,
                        msg ? ": " : "", msg ? msg : "");
  if (n > 0) {
    ssize_t ignored =
        ::write(STDERR_FILENO, buf, static_cast<size_t>(n) < sizeof buf ? n : sizeof buf - 1);
    (void)ignored;
  }
  std::abort();
}

}  // namespace hp::detail
