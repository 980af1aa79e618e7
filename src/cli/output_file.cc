#include "cli/output_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>

namespace hp::cli {

namespace {

constexpr const char* kSymlink =
    "is a symbolic link: hotprobe does not write through links (they may point at a file of "
    "someone else); give the real path";
constexpr const char* kNotRegular =
    "is not a regular file (a FIFO, device or socket): --output takes a regular file; to pipe "
    "the output, leave --output out and use hotprobe's stdout";
constexpr const char* kHardLinks =
    "has other hard links: it may be another file under a second name, and is not "
    "overwritten; remove it first or choose another path";

std::FILE* refuse(int fd, int err, const std::string& path, const char* why) {
  if (fd >= 0) ::close(fd);
  std::fprintf(stderr, "hotprobe: --output '%s' %s\n", path.c_str(), why);
  errno = err;
  return nullptr;
}

std::string not_owned(const struct stat& st) {
  return "belongs to user " + std::to_string(st.st_uid) + ", not to the user hotprobe runs as (" +
         std::to_string(::geteuid()) +
         "): it is not overwritten; remove it first or choose another path";
}

}  // namespace

std::FILE* open_output_file(const std::string& path) {
  // No O_TRUNC yet: nothing is changed before the checks below. O_NONBLOCK: opening a FIFO
  // does not wait for a reader (ENXIO without one), and the fstat check refuses it anyway.
  const int fd = ::open(path.c_str(),
                        O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0600);
  if (fd < 0) {
    const int err = errno;
    if (err == ELOOP) return refuse(-1, err, path, kSymlink);
    if (err == ENXIO) {
      return refuse(-1, err, path,
                    "is a FIFO or socket with no reader: --output takes a regular file (to "
                    "pipe the output, leave --output out and use hotprobe's stdout)");
    }
    errno = err;
    return nullptr;  // the caller names errno (EACCES, ENOENT, EISDIR...)
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) return refuse(fd, errno, path, "cannot be examined (fstat failed)");
  if (!S_ISREG(st.st_mode)) return refuse(fd, EINVAL, path, kNotRegular);
  if (st.st_uid != ::geteuid()) return refuse(fd, EPERM, path, not_owned(st).c_str());
  if (st.st_nlink > 1) return refuse(fd, EMLINK, path, kHardLinks);
  if (::ftruncate(fd, 0) != 0) return refuse(fd, errno, path, "cannot be truncated");
  // Writes block as a regular file's always do; O_NONBLOCK only mattered for the open.
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  std::FILE* f = ::fdopen(fd, "w");
  if (!f) return refuse(fd, errno, path, "cannot be opened as a stream");
  return f;
}

bool output_path_acceptable(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return true;  // not there yet: the open creates it
  std::string why;
  if (S_ISLNK(st.st_mode)) {
    why = kSymlink;
  } else if (!S_ISREG(st.st_mode)) {
    why = kNotRegular;
  } else if (st.st_uid != ::geteuid()) {
    why = not_owned(st);
  } else if (st.st_nlink > 1) {
    why = kHardLinks;
  }
  if (why.empty()) return true;
  refuse(-1, 0, path, why.c_str());
  return false;
}

}  // namespace hp::cli
