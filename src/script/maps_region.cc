// The map region's mechanism: the memfd, its mapping in hotprobe and in the traced process,
// the bump allocator, the fork child's private view, and a session's publication of its
// final report (docs/design/script-runtime.md, "Maps shared with hotprobe"). The
// process-wide hand-over to the next MapSet and `hotprobe run`'s region are in maps.cc.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "script/maps.h"
#include "script/symbolize.h"

namespace hotprobe::script {

std::unique_ptr<SharedRegion> SharedRegion::create(std::size_t bytes, std::string* error) {
  auto fail = [&](const char* what) {
    if (error) *error = std::string(what) + ": " + std::strerror(errno);
    return nullptr;
  };
  bytes = std::max<std::size_t>(bytes, 4096);
  int fd = ::memfd_create("hotprobe-maps", MFD_CLOEXEC);
  if (fd < 0) return fail("memfd_create");
  if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0) {  // sparse: pages come on first touch
    const int e = errno;
    ::close(fd);
    errno = e;
    return fail("ftruncate");
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (p == MAP_FAILED) {
    const int e = errno;
    ::close(fd);
    errno = e;
    return fail("mmap");
  }
  std::unique_ptr<SharedRegion> r(new SharedRegion);
  r->base_ = static_cast<char*>(p);
  r->size_ = bytes;
  r->fd_ = fd;
  r->note_identity();
  region::Header& h = r->header();
  h.magic = region::kMagic;
  h.version = region::kVersion;
  h.size = bytes;
  h.top.store((sizeof(region::Header) + region::kAlign - 1) & ~(region::kAlign - 1),
              std::memory_order_relaxed);
  return r;
}

std::unique_ptr<SharedRegion> SharedRegion::open(int fd, std::string* error) {
  auto fail = [&](std::string what) {
    if (error) *error = std::move(what);
    return nullptr;
  };
  struct stat st {};
  if (::fstat(fd, &st) != 0) return fail(std::string("fstat: ") + std::strerror(errno));
  const auto bytes = static_cast<std::size_t>(st.st_size);
  if (bytes < sizeof(region::Header)) return fail("not a hotprobe map region (too small)");
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (p == MAP_FAILED) return fail(std::string("mmap: ") + std::strerror(errno));
  std::unique_ptr<SharedRegion> r(new SharedRegion);
  r->base_ = static_cast<char*>(p);
  r->size_ = bytes;
  r->fd_ = fd;
  const region::Header& h = r->header();
  if (h.magic != region::kMagic || h.version != region::kVersion || h.size != bytes) {
    r->fd_ = -1;  // not ours to close
    return fail("not a hotprobe map region of this version");
  }
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  r->dev_ = st.st_dev;
  r->ino_ = st.st_ino;
  return r;
}

void SharedRegion::close_fd() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void SharedRegion::note_identity() {
  struct stat st {};
  if (::fstat(fd_, &st) == 0) {
    dev_ = st.st_dev;
    ino_ = st.st_ino;
  }
}

SharedRegion::~SharedRegion() {
  if (base_) ::munmap(base_, size_);
  if (fd_ >= 0) ::close(fd_);
}

std::uint64_t SharedRegion::alloc(std::size_t bytes) {
  if (!shared()) return 0;
  region::Header& h = header();
  const std::uint64_t n = (bytes + region::kAlign - 1) & ~std::uint64_t{region::kAlign - 1};
  // A failed bump leaves `top` past the end: every later attempt fails too (counted).
  const std::uint64_t off = h.top.fetch_add(n, std::memory_order_relaxed);
  if (off > size_ || n > size_ - off) {
    h.refused.fetch_add(1, std::memory_order_relaxed);
    return 0;
  }
  return off;
}

void SharedRegion::privatize() {
  if (!shared_.exchange(false)) return;
  constexpr int kProt = PROT_READ | PROT_WRITE;
  // Same address, same contents, copy-on-write: the child's later writes stay its own.
  // Through the descriptor if it is still the region's (the program may have closed it,
  // or reused its number for a file of its own).
  struct stat st {};
  if (fd_ >= 0 && ::fstat(fd_, &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_ &&
      ::mmap(base_, size_, kProt, MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE, fd_, 0) != MAP_FAILED)
    return;
  // Otherwise a private copy of the part in use, moved over the shared mapping.
  void* copy = ::mmap(nullptr, size_, kProt, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (copy != MAP_FAILED) {
    std::memcpy(copy, base_, std::min<std::uint64_t>(header().top.load(), size_));
    if (::mremap(copy, size_, size_, MREMAP_MAYMOVE | MREMAP_FIXED, base_) != MAP_FAILED) return;
    ::munmap(copy, size_);
  }
  // Never into the parent's maps: empty ones rather. Should even that fail, the child's
  // maps stay the parent's; nothing better is left to do here.
  (void)::mmap(base_, size_, kProt, MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE | MAP_ANONYMOUS, -1, 0);
}

std::uint64_t source_hash(std::string_view source) {
  std::uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
  for (unsigned char c : source) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

bool region_maps_complete(const SharedRegion& r) {
  return r.shared() && r.header().state.load(std::memory_order_acquire) == 1 &&
         r.header().refused.load(std::memory_order_relaxed) == 0;
}

bool hand_over_end_output(SharedRegion& r, std::string& text) {
  if (!region_maps_complete(r)) return false;
  const std::uint64_t off = text.empty() ? 0 : r.alloc(text.size());
  if (!text.empty() && !off) return false;  // no room: the channel carries it all
  if (off) std::memcpy(r.at<char>(off), text.data(), text.size());
  region::Header& h = r.header();
  // The modules loaded since the maps were laid out (dlopen) name their frames too.
  if (h.modules_off.load(std::memory_order_relaxed)) publish_modules(r);
  h.end_text_off = off;
  h.end_text_len = text.size();
  h.phase.store(region::kEndDone, std::memory_order_release);  // the text, then the phase
  text.clear();
  return true;
}

void set_maps_phase(SharedRegion& r, std::uint32_t phase) {
  if (r.shared() && r.header().state.load(std::memory_order_acquire) == 1)
    r.header().phase.store(phase, std::memory_order_release);
}

void mark_channel_lost(SharedRegion& r) noexcept {
  if (r.shared() && r.header().state.load(std::memory_order_acquire) == 1)
    r.header().channel_lost.store(1, std::memory_order_release);
}

}  // namespace hotprobe::script
