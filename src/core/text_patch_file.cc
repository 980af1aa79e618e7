// A site's code against its module's file (core/text_patch_file.h).
#include "core/text_patch_file.h"

#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "elf/elf_file.h"

namespace hp::core {
namespace {

struct Mapped {
  const std::uint8_t* data = nullptr;  // null: the file could not be mapped
  std::size_t size = 0;
};

// (dev, ino) -> the file mapped read-only. Never destroyed (sites are built until exit).
std::mutex& g_files_mu = *new std::mutex;
std::map<std::pair<std::uint64_t, std::uint64_t>, Mapped>& g_files =
    *new std::map<std::pair<std::uint64_t, std::uint64_t>, Mapped>;

Mapped map_file(std::uint64_t dev, std::uint64_t ino, const std::string& path) {
  auto fd = elf::open_regular_file(path, elf::ModuleKey{dev, ino});
  if (!fd.ok()) return {};
  Mapped m;
  struct stat st;
  if (fstat(*fd, &st) == 0 && st.st_size > 0) {
    void* p = mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ, MAP_PRIVATE, *fd, 0);
    if (p != MAP_FAILED) {
      m.data = static_cast<const std::uint8_t*>(p);
      m.size = static_cast<std::size_t>(st.st_size);
    }
  }
  close(*fd);
  return m;
}

}  // namespace

std::uintptr_t first_byte_unlike_file(std::uint64_t dev, std::uint64_t ino, std::string_view path,
                                      std::uint64_t file_offset, std::uintptr_t addr,
                                      std::size_t len) {
  Mapped m;
  {
    std::lock_guard<std::mutex> lock(g_files_mu);
    auto it = g_files.find({dev, ino});
    if (it == g_files.end()) {
      std::string p(path);
      Dl_info info{};
      if (p.empty() && dladdr(reinterpret_cast<void*>(addr), &info) && info.dli_fname &&
          *info.dli_fname) {
        p = info.dli_fname;
      }
      Mapped got = p.empty() ? Mapped{} : map_file(dev, ino, p);
      if (!got.data) got = map_file(dev, ino, "/proc/self/exe");  // the program itself
      it = g_files.emplace(std::make_pair(dev, ino), got).first;
    }
    m = it->second;
  }
  if (!m.data || file_offset > m.size || len > m.size - file_offset) return 0;
  const auto* mem = reinterpret_cast<const std::uint8_t*>(addr);
  for (std::size_t i = 0; i < len; i++) {
    if (mem[i] != m.data[file_offset + i]) return addr + i;
  }
  return 0;
}

}  // namespace hp::core
