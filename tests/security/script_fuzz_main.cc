// libFuzzer target (clang only) of the script front end and evaluator.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "script/fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  hotprobe::script::fuzz_one(std::string_view(reinterpret_cast<const char*>(data), size));
  return 0;
}
