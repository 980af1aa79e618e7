// Helpers shared by the tests/elf programs: where the fixture libraries are.
#pragma once

#include <limits.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

namespace hp::elf::testing {

// The fixture libraries are built by tests/CMakeLists.txt into tests/elf_fixtures/ of
// the build tree, next to the test executables; $HP_ELF_FIXTURE_DIR overrides.
inline std::string fixture_path(const char* file) {
  if (const char* dir = std::getenv("HP_ELF_FIXTURE_DIR")) return std::string(dir) + "/" + file;
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return file;
  std::string exe(buf, static_cast<size_t>(n));
  return exe.substr(0, exe.rfind('/')) + "/elf_fixtures/" + file;
}

inline std::string fixture_lib() {
  return fixture_path("libhp_elf_fixture.so");
}
inline std::string bulk_lib() {
  return fixture_path("libhp_elf_bulk.so");
}

}  // namespace hp::elf::testing
