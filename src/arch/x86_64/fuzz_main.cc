// libFuzzer target (clang only): run as `hotprobe_arch_fuzz corpus/`.
#include <cstddef>
#include <cstdint>

#include "arch/x86_64/fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  hp::arch::fuzz_one({data, size});
  return 0;
}
