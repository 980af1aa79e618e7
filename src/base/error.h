// Internal helpers around the public Result/Error vocabulary (include/hotprobe/result.h).
#pragma once

#include <cerrno>
#include <string>

#include "hotprobe/result.h"

namespace hp {

using hotprobe::Errc;
using hotprobe::Error;
using hotprobe::Result;

// An Error for a failed system call: "what: strerror(errno)", code chosen from errno.
Error sys_error(std::string what, int err = errno);

// Propagate an error from a Result-returning expression (ZYAN_CHECK's role).
#define HP_TRY(expr)                                         \
  do {                                                       \
    auto hp_try_result_ = (expr);                            \
    if (!hp_try_result_.ok()) return hp_try_result_.error(); \
  } while (0)

}  // namespace hp
