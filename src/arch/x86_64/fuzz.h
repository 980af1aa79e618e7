// The fuzz entry point, shared by the clang libFuzzer target (fuzz_main.cc) and the g++
// replay test (tests/arch/fuzz_replay_test.cc). It never fails quietly: an inconsistency
// between the decoder, the planner and the relocator dies through HP_CHECK.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace hp::arch {

struct FuzzStats {
  std::size_t decoded = 0;    // inputs whose first instruction decoded
  std::size_t planned = 0;    // inputs with a jmp-mode plan at offset 0
  std::size_t relocated = 0;  // successful relocations checked
  std::size_t refused = 0;    // relocations refused with not_relocatable
};

// Feeds `data` to the decoder, plan_displacement, plan_int3, the relocator (near and far
// destinations), the patch jmp and the int3-mode copy, and checks every success.
void fuzz_one(std::span<const std::uint8_t> data, FuzzStats* stats = nullptr);

// Walks `code` (generated at `address`) instruction by instruction, stepping over the
// 8-byte literal of jmp [rip+0]; dies if anything does not decode.
void check_decodes(std::span<const std::uint8_t> code, std::uint64_t address);

}  // namespace hp::arch
