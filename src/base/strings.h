// Small string helpers shared by the layers (header-only).
#pragma once

#include <algorithm>
#include <cstddef>
#include <string_view>
#include <vector>

namespace hp {

// Levenshtein distance (one row of the classic dynamic program): "did you mean" hints
// for symbols (src/elf) and for script names (src/script).
inline std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j)
    row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      const std::size_t sub = diag + (a[i - 1] == b[j - 1] ? 0 : 1);
      row[j] = std::min({up + 1, row[j - 1] + 1, sub});
      diag = up;
    }
  }
  return row[b.size()];
}

}  // namespace hp
