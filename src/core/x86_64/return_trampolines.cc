#include "core/x86_64/return_trampolines.h"

#include <vector>

#include "core/dispatch.h"
#include "core/x86_64/templates.h"

namespace hp::core {

using hotprobe::Scheme;

ReturnTrampolineSpec return_trampoline_spec(Scheme s, std::uint64_t address, bool by_ret,
                                            FastReturn& fast) {
  ReturnTrampolineSpec spec;
  spec.address = address;
  spec.dispatcher = reinterpret_cast<std::uint64_t>(return_dispatcher(s));
  spec.save_vector = kTrampolinesSaveVectors;
  spec.exit_by_ret = by_ret;
  if (fast_return_for(s, fast)) spec.fast = &fast;
  return spec;
}

Result<ReturnTrampolines> install_return_trampolines(arch::CodeMemory& code, Scheme s,
                                                     std::uint64_t near) {
  ReturnTrampolines out;
  for (bool by_ret : {false, true}) {
    auto slot = code.allocate(near);
    if (!slot.ok()) return slot.error();
    FastReturn fast;
    auto bytes = make_return_trampoline(return_trampoline_spec(s, slot->address, by_ret, fast));
    if (!bytes.ok()) return bytes.error();
    HP_TRY(code.write(*slot, *bytes));
    (by_ret ? out.landing : out.hijack) = slot->address;
  }
  OneReturnEntry one;
  if (s == Scheme::tasks_trace && one_return_entry_for(one)) {
    auto slot = code.allocate(near);
    if (!slot.ok()) return slot.error();
    auto bytes = make_one_return_entry(one, slot->address);
    if (!bytes.ok()) return bytes.error();
    HP_TRY(code.write(*slot, *bytes));
    set_one_return_entry(slot->address);
  }
  set_return_trampoline(s, out.hijack);
  return out;
}

}  // namespace hp::core
