#include "base/error.h"

#include <cstring>

namespace hotprobe {

std::string_view to_string(Errc code) noexcept {
  switch (code) {
    case Errc::ok:
      return "ok";
    case Errc::invalid_argument:
      return "invalid argument";
    case Errc::not_found:
      return "not found";
    case Errc::permission_denied:
      return "permission denied";
    case Errc::unsupported:
      return "unsupported";
    case Errc::not_on_boundary:
      return "not on an instruction boundary";
    case Errc::not_relocatable:
      return "not relocatable";
    case Errc::no_memory_in_reach:
      return "no trampoline memory in reach";
    case Errc::already_attached:
      return "already attached";
    case Errc::busy:
      return "busy";
    case Errc::timed_out:
      return "timed out";
    case Errc::io_error:
      return "I/O error";
    case Errc::internal:
      return "internal error";
  }
  return "unknown error";
}

}  // namespace hotprobe

namespace hp {

Error sys_error(std::string what, int err) {
  Errc code = Errc::io_error;
  switch (err) {
    case EPERM:
    case EACCES:
      code = Errc::permission_denied;
      break;
    case ENOENT:
    case ESRCH:
      code = Errc::not_found;
      break;
    case EINVAL:
      code = Errc::invalid_argument;
      break;
    case ENOSYS:
    case EOPNOTSUPP:
      code = Errc::unsupported;
      break;
    case EBUSY:
      code = Errc::busy;
      break;
    case ETIMEDOUT:
      code = Errc::timed_out;
      break;
    default:
      break;
  }
  what += ": ";
  what += std::strerror(err);
  return Error(code, std::move(what));
}

}  // namespace hp
