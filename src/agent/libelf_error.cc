// libelf's error state, for the agent's static libelf (src/agent/CMakeLists.txt). Debian's
// libelf.a keeps the last error in a thread-local variable with the local-exec TLS model,
// which only an executable may use: its error object (elf_error.o) cannot be linked into a
// shared object. These definitions come first on the agent's link line, so that object is
// never taken from the archive; every other libelf function calls __libelf_seterrno as
// before. The text of an error is its number: libelf's own table is in that object.
#include <libelf.h>

#include <cstdio>

namespace {

__attribute__((tls_model("initial-exec"))) thread_local int last_error = 0;
__attribute__((tls_model("initial-exec"))) thread_local char message[96];

}  // namespace

extern "C" {

// Called by libelf's functions on every error (libelfP.h).
void __libelf_seterrno(int value) {
  last_error = value;
}

int elf_errno(void) {
  int e = last_error;
  last_error = 0;
  return e;
}

const char* elf_errmsg(int error) {
  int e = error == -1 || error == 0 ? last_error : error;
  if (error == 0 && e == 0) return nullptr;
  if (e == 0) return "no error";
  std::snprintf(message, sizeof message,
                "libelf error %d (elfutils' libelf/libelfP.h names the codes)", e);
  return message;
}

}  // extern "C"
