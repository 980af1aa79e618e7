#pragma once

#include "hotprobe/api.h"

namespace hotprobe {
// The library's version, "MAJOR.MINOR.PATCH".
HOTPROBE_API const char* version() noexcept;
}  // namespace hotprobe
