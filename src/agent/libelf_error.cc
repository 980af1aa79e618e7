// libelf's error state, for the agent's static libelf (src/agent/CMakeLists.txt). Debian's
// libelf.a keeps the last error in a thread-local variable with the local-exec TLS model,
// which only an executable may use: its error object (elf_error.o) cannot be linked into a
// shared object. These definitions come first on the agent's link line, so that object is
// never taken from the archive; every other libelf function calls __libelf_seterrno as
// before. The text of an error is its number (elfutils' libelf/libelfP.h names the codes):
// libelf's own table of messages is in that object.
#include <libelf.h>

#include <array>

namespace {

__attribute__((tls_model("initial-exec"))) thread_local int last_error = 0;

// "libelf error N" for every code N below kCodes (libelf has about 50), made at compile
// time: no per-thread buffer, nothing allocated.
constexpr int kCodes = 100;
constexpr std::array<std::array<char, 20>, kCodes> make_messages() {
  std::array<std::array<char, 20>, kCodes> m{};
  constexpr char kPrefix[] = "libelf error ";
  for (int code = 0; code < kCodes; code++) {
    std::size_t i = 0;
    for (; kPrefix[i]; i++)
      m[code][i] = kPrefix[i];
    if (code >= 10) m[code][i++] = static_cast<char>('0' + code / 10);
    m[code][i] = static_cast<char>('0' + code % 10);
  }
  return m;
}
constexpr auto kMessages = make_messages();

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
  if (e < 0 || e >= kCodes) return "libelf error (unknown code)";
  return kMessages[e].data();
}

}  // extern "C"
