// The public library's own translation unit: thin entry points over the layers.
#include "hotprobe/hotprobe.h"

#include "base/compiler.h"

namespace hotprobe {

const char* version() noexcept { return "0.1.0"; }

}  // namespace hotprobe
