// Forwarding names for code that still spells the moved generators arch::...: the
// templates and the trampolines that embed them are core's (core/x86_64/), the pieces
// they are made of arch's (frame.h, handler_stack.h). Goes once core/engine.cc and
// core/dispatch.h include those headers instead.
#pragma once

#include "arch/x86_64/frame.h"
#include "arch/x86_64/handler_stack.h"
#include "core/x86_64/templates.h"
#include "core/x86_64/trampoline.h"

namespace hp::arch {

using core::EntryTrampolineBuilder;
using core::EntryTrampolineSpec;
using core::FastEntry;
using core::FastReturn;
using core::make_entry_trampoline;
using core::make_one_return_entry;
using core::make_return_trampoline;
using core::OneReturnEntry;
using core::ReturnStackLayout;
using core::ReturnTrampolineSpec;
using core::Trampoline;

}  // namespace hp::arch
