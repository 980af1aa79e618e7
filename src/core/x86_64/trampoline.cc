#include "core/x86_64/trampoline.h"

#include <cstring>

#include "arch/x86_64/frame.h"
#include "core/x86_64/templates.h"

namespace hp::core {

using namespace arch;  // NOLINT: the emitter's registers and pieces, throughout

namespace {

// Marks emit_handler_call() leaves for the code after it: the jump to the fallback without
// a handler stack (0: none) and the restore the fallback comes back to.
struct HandlerCall {
  std::uint32_t no_stack = 0;
  std::uint32_t exit_restore = 0;
};

// The handlers' part of a trampoline (entry, return site or return), after the save: onto
// the handler stack when `spec` asks, the fast path (`emit_fast`, a Result<void>()) when
// it has one, else the dispatcher's call, back, and the vector registers restored.
template <class Spec, class EmitFast>
Result<HandlerCall> emit_handler_call(Emitter& e, const Spec& spec, EmitFast&& emit_fast) {
  HandlerCall call;
  call.no_stack = spec.handler_stack ? emit_switch_in(e) : 0;
  if (spec.fast) {
    HP_TRY(emit_fast());
  } else {
    emit_call(e, spec.context, spec.dispatcher, spec.handler_stack ? r15 : rsp);
  }
  if (spec.handler_stack) emit_switch_out(e);
  call.exit_restore = e.size();
  emit_vector_restore(e, spec.save_vector);
  return call;
}

// EntryTrampolineSpec::run_at_ret (trampoline.h).
Result<Trampoline> make_ret_site_trampoline(const EntryTrampolineSpec& spec,
                                            const DisplacementPlan& plan) {
  const bool ret_inside = !plan.insns.empty() && plan.insns.back().kind == InsnKind::ret;
  if ((ret_inside && (plan.insns.back().length != 1 || plan.length < 2)) || spec.landing_target) {
    return Error(Errc::invalid_argument,
                 "a return site's displaced bytes end with a one-byte `ret` or right before "
                 "one, and it has no landing");
  }
  Emitter e(spec.address);
  Trampoline t;
  t.relocated_offset = 0;
  const std::uint32_t before = ret_inside ? plan.length - 1 : plan.length;
  // One pair per instruction before the ret, and {the ret's offset, here}: the save.
  HP_TRY(relocate_into(e, {plan.original.data(), before}, plan.patch_address, t.map));
  emit_save(e, /*flags_live=*/false, spec.save_vector, plan.patch_address + before);
  LandingJumps unused;
  auto call = emit_handler_call(e, spec, [&] {
    return emit_fast_entry(e, *spec.fast, spec.context, spec.dispatcher, unused);
  });
  if (!call.ok()) return call.error();
  std::vector<RareExit> rare;
  // At a ret rsp is 8 mod 16 (the return address on top), as at an entry.
  emit_restore_to_site(e, spec.save_vector, 0, /*likely_moved=*/true, rare);
  e.u8(0xc3);  // the ret (the original one, or the same byte right after the displaced ones)
  if (ret_inside) t.map.push_back({plan.length, e.size()});
  if (spec.handler_stack) {
    emit_no_handler_stack(e, call->no_stack, spec.context, spec.dispatcher, 0, call->exit_restore);
  }
  emit_rare_exits(e, rare);
  t.code = std::move(e).take();
  return t;
}

}  // namespace

namespace {

// make_entry_trampoline() into `e`, which may record its labels; `tail_at` = where the code
// after the relocated instructions starts.
Result<Trampoline> emit_entry(Emitter& e, const EntryTrampolineSpec& spec,
                              const DisplacementPlan& plan, std::uint32_t& tail_at) {
  if (spec.fast && (!spec.handler_stack || spec.save_vector)) {
    return Error(Errc::invalid_argument,
                 "the fast entry path runs on the handler stack only, without vector saves");
  }
  if (spec.run_at_ret) return make_ret_site_trampoline(spec, plan);
  const bool landing = spec.landing_target != 0;
  if (landing && (plan.flags_live || !plan.at_entry)) {
    return Error(Errc::invalid_argument,
                 "a return landing needs a site at a function's entry with dead flags");
  }
  emit_save(e, plan.flags_live, spec.save_vector, plan.probe_address);
  LandingJumps jumps;
  // Its exit_restore is where the call without a handler stack goes on (the plain call's
  // case: it tests al there as the call does; the fast path's test is in its template).
  auto call = emit_handler_call(e, spec, [&] {
    return emit_fast_entry(e, *spec.fast, spec.context, spec.dispatcher, jumps);
  });
  if (!call.ok()) return call.error();
  std::uint32_t plain_landing_jump = 0;
  if (!spec.fast && landing) {
    e.u8(0x84);  // test al, al: the dispatcher hijacked the return through the landing
    e.u8(0xc0);
    e.u8(0x0f);  // jnz rel32
    e.u8(0x85);
    plain_landing_jump = e.size();
    e.u32(0);
  }
  std::vector<RareExit> rare;
  if (plan.flags_live) {
    emit_restore(e, spec.save_vector);
    e.popfq();
    e.lea_rsp(kHead - 8);
  } else {
    emit_restore_to_site(e, spec.save_vector, 0, plan.at_entry, rare);
  }
  Trampoline t;
  t.relocated_offset = e.size();
  HP_TRY(relocate_into(e, plan.original, plan.patch_address, t.map));
  tail_at = e.size();
  e.jmp_to(plan.patch_address + plan.length, kValueBack);
  std::uint32_t landing_restore = 0;
  if (landing) {
    // The landing exit: the same restore, then a call whose return address is the landing,
    // so the return stack buffer predicts the function's ret into it; the callee drops
    // the pushed copy (written below the function's return slot, which holds the landing
    // already) and runs the displaced instructions.
    // The fast path's jumps come from the handler stack: the switch back first.
    const std::uint32_t exit = e.size();
    for (unsigned i = 0; i < jumps.n; i++)
      e.rel32_at(jumps.at[i], exit);
    if (spec.fast && spec.handler_stack) emit_switch_out(e);
    landing_restore = e.size();
    if (plain_landing_jump) e.rel32_at(plain_landing_jump, landing_restore);
    emit_restore_to_site(e, spec.save_vector, 0, true, rare);
    e.u8(0xe8);  // call rel32 (fixed up below)
    const std::uint32_t call_field = e.size();
    e.u32(0);
    t.landing_offset = e.size();
    e.jmp_to(spec.landing_target, kValueLanding);
    e.rel32_at(call_field, e.size());
    e.lea_rsp(8);
    e.jmp_rel32_to_offset(t.relocated_offset);
  }
  if (spec.handler_stack) {
    emit_no_handler_stack(e, call->no_stack, spec.context, spec.dispatcher,
                          spec.fast ? landing_restore : 0, call->exit_restore);
  }
  emit_rare_exits(e, rare);
  t.code = std::move(e).take();
  return t;
}

}  // namespace

Result<Trampoline> make_entry_trampoline(const EntryTrampolineSpec& spec,
                                         const DisplacementPlan& plan) {
  Emitter e(spec.address);
  std::uint32_t tail_at = 0;
  return emit_entry(e, spec, plan, tail_at);
}

Result<std::vector<std::uint8_t>> make_return_trampoline(const ReturnTrampolineSpec& spec) {
  if (spec.fast && (!spec.handler_stack || spec.save_vector)) {
    return Error(Errc::invalid_argument,
                 "the fast return path runs on the handler stack only, without vector saves");
  }
  Emitter e(spec.address);
  emit_save(e, /*flags_live=*/false, spec.save_vector, spec.address);
  auto call = emit_handler_call(
      e, spec, [&] { return emit_fast_return(e, *spec.fast, spec.context, spec.dispatcher); });
  if (!call.ok()) return call.error();
  // rax = the original return address: park it at [S-8] (the slot the ret popped), below
  // the caller's rsp but in the red zone, so the way there needs no register.
  e.mov_from_rsp_mem(rcx, way_back_offset(spec.save_vector));
  e.mov_to_mem(rcx, kHead - 8, rax);
  std::vector<RareExit> rare;
  if (spec.exit_by_ret) {
    emit_restore_to_site(e, spec.save_vector, -8, false, rare);
    e.u8(0xc3);  // ret: pops the caller's entry of the return stack buffer
  } else {
    emit_restore_to_site(e, spec.save_vector, 0, false, rare);
    e.jmp_rsp_mem(-8);
  }
  if (spec.handler_stack) {
    emit_no_handler_stack(e, call->no_stack, spec.context, spec.dispatcher, 0, call->exit_restore);
  }
  emit_rare_exits(e, rare);
  return std::move(e).take();
}

// ---------------------------------------------------------------------------------------
// EntryTrampolineBuilder: the labelled template (see trampoline.h).

struct EntryTrampolineBuilder::Template {
  // The kind: everything but the per-site values.
  bool flags_live = false, at_entry = false, save_vector = false, landing = false;
  bool handler_stack = false, has_fast = false;
  FastEntry fast;  // consumers = 0
  std::uint64_t dispatcher = 0;

  std::vector<std::uint8_t> head;  // [0, relocated_offset)
  std::vector<std::uint8_t> tail;  // from tail_at, after the relocated instructions
  std::uint32_t tail_at = 0;
  std::uint32_t landing_offset = 0;  // 0: none
  std::vector<Fixup> fields;
  bool usable = false;   // false: the kind takes make_entry_trampoline()
  bool checked = false;  // a copy for another site came out as the full build does

  bool same_kind(const EntryTrampolineSpec& spec, const DisplacementPlan& plan) const {
    if (flags_live != plan.flags_live || at_entry != plan.at_entry ||
        save_vector != spec.save_vector || landing != (spec.landing_target != 0) ||
        handler_stack != spec.handler_stack || has_fast != (spec.fast != nullptr) ||
        dispatcher != spec.dispatcher) {
      return false;
    }
    if (!has_fast) return true;
    FastEntry f = *spec.fast;
    f.consumers = 0;
    return f == fast;
  }

  // The trampoline for `spec` and `plan` from this template; false where a branch would
  // take the other form (make_entry_trampoline() is the way there).
  Result<bool> build(const EntryTrampolineSpec& spec, const DisplacementPlan& plan, Trampoline& t,
                     std::vector<std::uint8_t>&& buffer) const {
    Emitter e(spec.address, std::move(buffer));
    e.raw(head);
    t.relocated_offset = e.size();
    t.map.clear();
    HP_TRY(relocate_into(e, plan.original, plan.patch_address, t.map));
    const std::uint32_t at_tail = e.size();
    e.raw(tail);
    const auto moved = [&](std::uint32_t off) {
      return off >= tail_at ? off - tail_at + at_tail : off;
    };
    std::uint64_t value[kValueCount] = {};
    value[kValueContext] = spec.context;
    value[kValueDispatcher] = spec.dispatcher;
    value[kValueRip] = plan.probe_address;
    value[kValueBack] = plan.patch_address + plan.length;
    value[kValueLanding] = spec.landing_target;
    value[kValueConsumers] = spec.fast ? spec.fast->consumers : 0;
    std::uint8_t* b = e.bytes().data();
    for (const Fixup& f : fields) {
      const std::uint32_t at = moved(f.at);
      const std::uint64_t v = value[f.value];
      if (f.kind == Fixup::abs64 || f.kind == Fixup::abs64_far) {
        if (f.kind == Fixup::abs64_far && in_rel32_reach(spec.address + moved(f.target), v)) {
          return false;
        }
        std::memcpy(b + at, &v, 8);
        continue;
      }
      const std::uint64_t from = spec.address + at + 4;
      const std::uint64_t to = f.kind == Fixup::rel32 ? v : spec.address + moved(f.target);
      if (!in_rel32_reach(from, to)) return false;
      const auto rel = static_cast<std::uint32_t>(to - from);
      std::memcpy(b + at, &rel, 4);
    }
    t.landing_offset = landing_offset ? moved(landing_offset) : 0;
    t.code = std::move(e).take();
    return true;
  }
};

EntryTrampolineBuilder::EntryTrampolineBuilder() = default;

EntryTrampolineBuilder::~EntryTrampolineBuilder() {
  for (Template* p : templates_)
    delete p;
}

Result<Trampoline> EntryTrampolineBuilder::build(const EntryTrampolineSpec& spec,
                                                 const DisplacementPlan& plan) {
  const bool landing = spec.landing_target != 0;
  if (spec.run_at_ret || (landing && (plan.flags_live || !plan.at_entry)) ||
      (spec.fast && (!spec.handler_stack || spec.save_vector))) {
    return make_entry_trampoline(spec, plan);  // few (return sites), or refused
  }
  Template* k = nullptr;
  for (Template* p : templates_) {
    if (p->same_kind(spec, plan)) k = p;
  }
  if (!k) {
    constexpr std::size_t kMaxKinds = 16;  // a handful in practice (per scheme, flags, landing)
    if (templates_.size() >= kMaxKinds) return make_entry_trampoline(spec, plan);
    // The kind's first site: emitted with its labels, which makes the template.
    k = new Template;
    templates_.push_back(k);
    k->flags_live = plan.flags_live;
    k->at_entry = plan.at_entry;
    k->save_vector = spec.save_vector;
    k->landing = landing;
    k->handler_stack = spec.handler_stack;
    k->has_fast = spec.fast != nullptr;
    if (k->has_fast) {
      k->fast = *spec.fast;
      k->fast.consumers = 0;
    }
    k->dispatcher = spec.dispatcher;
    Emitter e(spec.address);
    e.record_fixups(&k->fields);
    auto t = emit_entry(e, spec, plan, k->tail_at);
    if (!t.ok()) return t;
    k->head.assign(t->code.begin(), t->code.begin() + t->relocated_offset);
    k->tail.assign(t->code.begin() + k->tail_at, t->code.end());
    k->landing_offset = t->landing_offset;
    k->usable = k->landing_offset == 0 || k->landing_offset >= k->tail_at;
    return t;
  }
  if (!k->usable) return make_entry_trampoline(spec, plan);
  Trampoline t;
  t.map = std::move(spare_map_);
  auto built = k->build(spec, plan, t, std::move(spare_code_));
  if (!built.ok()) return built.error();
  if (!*built) return make_entry_trampoline(spec, plan);
  if (!k->checked) {
    auto want = make_entry_trampoline(spec, plan);
    if (!want.ok()) return want;
    k->checked = true;
    if (want->code != t.code || want->landing_offset != t.landing_offset || want->map != t.map) {
      k->usable = false;  // a field without a label: the full build from now on
      return want;
    }
  }
  from_template_++;
  return t;
}

void EntryTrampolineBuilder::recycle(Trampoline&& t) {
  spare_code_ = std::move(t.code);
  spare_map_ = std::move(t.map);
}

}  // namespace hp::core
