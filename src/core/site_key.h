// The key of a site, as the kernel keys a uprobe: (device, inode, file offset).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

namespace hp::core {

struct SiteKey {
  std::uint64_t dev, ino, off;
  bool operator==(const SiteKey&) const = default;
};
struct SiteKeyHash {
  std::size_t operator()(const SiteKey& k) const noexcept {
    return std::hash<std::uint64_t>()(k.dev * 0x9E3779B97F4A7C15ull ^
                                      k.ino * 0xC2B2AE3D27D4EB4Full ^ k.off);
  }
};

}  // namespace hp::core
