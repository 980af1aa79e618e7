#include "core/x86_64/trampoline.h"

#include <cstring>

#include "arch/x86_64/frame.h"
#include "core/x86_64/templates.h"

namespace hp::core {

using namespace arch;  // NOLINT: the emitter's registers and pieces, throughout

namespace {

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
  const std::uint32_t no_stack = spec.handler_stack ? emit_switch_in(e) : 0;
  LandingJumps unused;
  if (spec.fast) {
    HP_TRY(emit_fast_entry(e, *spec.fast, spec.context, spec.dispatcher, unused));
  } else {
    emit_call(e, spec.context, spec.dispatcher, spec.handler_stack ? r15 : rsp);
  }
  if (spec.handler_stack) emit_switch_out(e);
  const std::uint32_t exit_restore = e.size();
  emit_vector_restore(e, spec.save_vector);
  std::vector<RareExit> rare;
  // At a ret rsp is 8 mod 16 (the return address on top), as at an entry.
  emit_restore_to_site(e, spec.save_vector, 0, /*likely_moved=*/true, rare);
  e.u8(0xc3);  // the ret (the original one, or the same byte right after the displaced ones)
  if (ret_inside) t.map.push_back({plan.length, e.size()});
  if (spec.handler_stack) {
    emit_no_handler_stack(e, no_stack, spec.context, spec.dispatcher, 0, exit_restore);
  }
  emit_rare_exits(e, spec.address, rare);
  t.code = std::move(e).take();
  return t;
}

}  // namespace

Result<Trampoline> make_entry_trampoline(const EntryTrampolineSpec& spec,
                                         const DisplacementPlan& plan) {
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
  Emitter e(spec.address);
  emit_save(e, plan.flags_live, spec.save_vector, plan.probe_address);
  const std::uint32_t no_stack = spec.handler_stack ? emit_switch_in(e) : 0;
  LandingJumps jumps;
  if (spec.fast) {
    HP_TRY(emit_fast_entry(e, *spec.fast, spec.context, spec.dispatcher, jumps));
  } else {
    emit_call(e, spec.context, spec.dispatcher, spec.handler_stack ? r15 : rsp);
  }
  if (spec.handler_stack) emit_switch_out(e);
  // Where the call without a handler stack goes on (the plain call's case: it tests al
  // here as the call above does; the fast path's test is in its template).
  const std::uint32_t exit_restore = e.size();
  emit_vector_restore(e, spec.save_vector);
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
  e.jmp_to(plan.patch_address + plan.length);
  std::uint32_t landing_restore = 0;
  if (landing) {
    // The landing exit: the same restore, then a call whose return address is the landing,
    // so the return stack buffer predicts the function's ret into it; the callee drops
    // the pushed copy (written below the function's return slot, which holds the landing
    // already) and runs the displaced instructions.
    // The fast path's jumps come from the handler stack: the switch back first.
    const std::uint32_t exit = e.size();
    for (unsigned i = 0; i < jumps.n; i++)
      e.patch_u32(jumps.at[i], exit - (jumps.at[i] + 4));
    if (spec.fast && spec.handler_stack) emit_switch_out(e);
    landing_restore = e.size();
    if (plain_landing_jump)
      e.patch_u32(plain_landing_jump, landing_restore - (plain_landing_jump + 4));
    emit_restore_to_site(e, spec.save_vector, 0, true, rare);
    e.u8(0xe8);  // call rel32 (fixed up below)
    const std::uint32_t call_field = e.size();
    e.u32(0);
    t.landing_offset = e.size();
    e.jmp_to(spec.landing_target);
    e.patch_u32(call_field, e.size() - (call_field + 4));
    e.lea_rsp(8);
    e.jmp_rel32(spec.address + t.relocated_offset);
  }
  if (spec.handler_stack) {
    emit_no_handler_stack(e, no_stack, spec.context, spec.dispatcher,
                          spec.fast ? landing_restore : 0, exit_restore);
  }
  emit_rare_exits(e, spec.address, rare);
  t.code = std::move(e).take();
  return t;
}

Result<std::vector<std::uint8_t>> make_return_trampoline(const ReturnTrampolineSpec& spec) {
  if (spec.fast && (!spec.handler_stack || spec.save_vector)) {
    return Error(Errc::invalid_argument,
                 "the fast return path runs on the handler stack only, without vector saves");
  }
  Emitter e(spec.address);
  emit_save(e, /*flags_live=*/false, spec.save_vector, spec.address);
  const std::uint32_t no_stack = spec.handler_stack ? emit_switch_in(e) : 0;
  if (spec.fast) {
    HP_TRY(emit_fast_return(e, *spec.fast, spec.context, spec.dispatcher));
  } else {
    emit_call(e, spec.context, spec.dispatcher, spec.handler_stack ? r15 : rsp);
  }
  if (spec.handler_stack) emit_switch_out(e);
  const std::uint32_t exit_restore = e.size();
  emit_vector_restore(e, spec.save_vector);
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
    emit_no_handler_stack(e, no_stack, spec.context, spec.dispatcher, 0, exit_restore);
  }
  emit_rare_exits(e, spec.address, rare);
  return std::move(e).take();
}

// ---------------------------------------------------------------------------------------
// EntryTrampolineBuilder: the prototype (see trampoline.h).

namespace {

// The values a trampoline's bytes may depend on, besides its kind. `relocated` is the
// length of the relocated displaced instructions (the tail moves with it).
enum ProtoParam : unsigned {
  kAddress,
  kContext,
  kConsumers,
  kProbe,
  kBack,  // plan.patch_address + plan.length: where the relocated code jumps back to
  kLanding,
  kRelocated,
  kParamCount
};
// An absolute value lives in an 8-byte field; the others move rel32 fields.
constexpr bool kParamIsAbsolute[kParamCount] = {false, true, true, true, false, false, false};
// How far each value moves in the discovery builds: the low byte of each is nonzero, so the
// first byte that differs is a field's first byte; small, so every rel32 still reaches.
constexpr std::uint64_t kParamDelta[kParamCount] = {
    0x1230, 0x0101010101010101, 0x0202020202020202, 0x0303030303030303, 0x2340, 0x3450, 1};

// Dummy displaced instructions of three lengths (multi-byte nops, copied as they are).
constexpr std::uint8_t kNop5[] = {0x0f, 0x1f, 0x44, 0x00, 0x00};
constexpr std::uint8_t kNop6[] = {0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00};
constexpr std::uint8_t kNop7[] = {0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00};

struct ProtoValues {
  std::uint64_t v[kParamCount] = {};
};

ProtoValues values_of(const EntryTrampolineSpec& spec, const DisplacementPlan& plan,
                      std::uint64_t relocated) {
  ProtoValues p;
  p.v[kAddress] = spec.address;
  p.v[kContext] = spec.context;
  p.v[kConsumers] = spec.fast ? spec.fast->consumers : 0;
  p.v[kProbe] = plan.probe_address;
  p.v[kBack] = plan.patch_address + plan.length;
  p.v[kLanding] = spec.landing_target;
  p.v[kRelocated] = relocated;
  return p;
}

// One discovery build: the site's spec and plan with the values of `p` and dummy displaced
// instructions of p.v[kRelocated] bytes.
struct ProtoBuild {
  EntryTrampolineSpec spec;
  FastEntry fast;
  DisplacementPlan plan;
};

ProtoBuild dummy_build(const EntryTrampolineSpec& spec, const DisplacementPlan& plan,
                       const ProtoValues& p) {
  ProtoBuild b;
  b.spec = spec;
  if (spec.fast) {
    b.fast = *spec.fast;
    b.fast.consumers = p.v[kConsumers];
    b.spec.fast = &b.fast;
  }
  b.spec.address = p.v[kAddress];
  b.spec.context = p.v[kContext];
  b.spec.landing_target = p.v[kLanding];
  b.plan.probe_address = p.v[kProbe];
  b.plan.at_entry = plan.at_entry;
  b.plan.flags_live = plan.flags_live;
  using Bytes = std::span<const std::uint8_t>;
  const Bytes nop = p.v[kRelocated] == 5   ? Bytes(kNop5)
                    : p.v[kRelocated] == 6 ? Bytes(kNop6)
                                           : Bytes(kNop7);
  b.plan.original.assign(nop.begin(), nop.end());
  b.plan.length = static_cast<std::uint32_t>(nop.size());
  b.plan.patch_address = p.v[kBack] - b.plan.length;
  b.plan.patch_offset = plan.patch_offset;
  return b;
}

// The end of the relocated instructions in a trampoline (its map's last pair).
std::uint32_t relocated_end(const Trampoline& t) {
  return t.map.empty() ? t.relocated_offset : t.map.back().relocated;
}

}  // namespace

struct EntryTrampolineBuilder::Prototype {
  // The kind: everything but the ProtoParam values.
  bool flags_live = false, at_entry = false, save_vector = false, landing = false;
  bool has_fast = false;
  FastEntry fast;  // consumers = 0
  std::uint64_t dispatcher = 0;
  bool usable = false;  // false: the kind takes make_entry_trampoline()

  // A field: `width` bytes at `at` (in the head, or from the tail's start), whose value is
  // its value in the base build plus the sum of coeff[i] * (value i - base value i).
  struct Field {
    std::uint32_t at = 0;
    bool in_tail = false;
    std::uint8_t width = 0;
    std::int8_t coeff[kParamCount] = {};
    // The nonzero coefficients, listed (most fields move with one or two values).
    std::uint8_t terms = 0;
    std::uint8_t term_param[kParamCount] = {};
  };
  ProtoValues base;
  std::vector<std::uint8_t> head;  // [0, relocated_offset)
  std::vector<std::uint8_t> tail;  // after the relocated instructions
  std::uint32_t landing_in_tail = 0;
  bool has_landing_offset = false;
  std::vector<Field> fields;

  bool same_kind(const EntryTrampolineSpec& spec, const DisplacementPlan& plan) const {
    if (flags_live != plan.flags_live || at_entry != plan.at_entry ||
        save_vector != spec.save_vector || landing != (spec.landing_target != 0) ||
        has_fast != (spec.fast != nullptr) || dispatcher != spec.dispatcher) {
      return false;
    }
    if (!has_fast) return true;
    FastEntry f = *spec.fast;
    f.consumers = 0;
    return f == fast;
  }

  // The trampoline for `spec` and `plan` from this prototype; false where a rel32 would not
  // reach (make_entry_trampoline() picks another form there).
  Result<bool> build(const EntryTrampolineSpec& spec, const DisplacementPlan& plan, Trampoline& t,
                     std::vector<std::uint8_t>&& buffer) const {
    Emitter e(spec.address, std::move(buffer));
    e.raw(head);
    t.relocated_offset = e.size();
    t.map.clear();
    HP_TRY(relocate_into(e, plan.original, plan.patch_address, t.map));
    const std::uint32_t tail_at = e.size();
    e.raw(tail);
    const ProtoValues site = values_of(spec, plan, tail_at - t.relocated_offset);
    std::int64_t delta[kParamCount];
    for (unsigned i = 0; i < kParamCount; i++)
      delta[i] = static_cast<std::int64_t>(site.v[i] - base.v[i]);
    std::uint8_t* b = e.bytes().data();
    for (const Field& f : fields) {
      std::uint8_t* at = b + f.at + (f.in_tail ? tail_at : 0);
      if (f.width == 8) {
        std::uint64_t v;
        std::memcpy(&v, at, 8);
        for (unsigned k = 0; k < f.terms; k++)
          v += static_cast<std::uint64_t>(f.coeff[f.term_param[k]] * delta[f.term_param[k]]);
        std::memcpy(at, &v, 8);
      } else {
        std::int32_t v32;
        std::memcpy(&v32, at, 4);
        std::int64_t v = v32;
        for (unsigned k = 0; k < f.terms; k++)
          v += f.coeff[f.term_param[k]] * delta[f.term_param[k]];
        if (v < INT32_MIN || v > INT32_MAX) return false;
        v32 = static_cast<std::int32_t>(v);
        std::memcpy(at, &v32, 4);
      }
    }
    t.landing_offset = has_landing_offset ? tail_at + landing_in_tail : 0;
    t.code = std::move(e).take();
    return true;
  }

  // Records the fields of one region that param `i` moves: `a` is the base build's bytes,
  // `b` the build with value i moved by its delta. False when a difference is not a
  // field of the expected form.
  bool discover(std::span<const std::uint8_t> a, std::span<const std::uint8_t> b, bool in_tail,
                unsigned i) {
    const unsigned width = kParamIsAbsolute[i] ? 8 : 4;
    for (std::uint32_t pos = 0; pos < a.size(); pos++) {
      if (a[pos] == b[pos]) continue;
      if (pos + width > a.size()) return false;
      std::uint64_t va = 0, vb = 0;
      std::memcpy(&va, &a[pos], width);
      std::memcpy(&vb, &b[pos], width);
      const std::uint64_t mask = width == 8 ? ~std::uint64_t{0} : 0xffffffffu;
      const std::uint64_t d = (vb - va) & mask;
      std::int8_t c = 0;
      if (d == (kParamDelta[i] & mask)) c = 1;
      if (d == ((0 - kParamDelta[i]) & mask)) c = -1;
      if (c == 0) return false;
      Field* f = nullptr;
      for (Field& g : fields) {
        if (g.in_tail == in_tail && g.at == pos) f = &g;
      }
      if (!f) {
        fields.push_back({pos, in_tail, static_cast<std::uint8_t>(width), {}});
        f = &fields.back();
      }
      if (f->width != width) return false;
      f->coeff[i] = c;
      pos += width - 1;
    }
    return true;
  }

  // Fields must not overlap, and each must be one of: an absolute value (8 bytes, one
  // absolute value, coefficient 1); a rel32 to a fixed or moving target (the trampoline's
  // address -1, at most one target +1, the relocated length +-1) or between the head and
  // the tail (the relocated length +-1 only).
  bool fields_make_sense() const {
    for (const Field& f : fields) {
      for (const Field& g : fields) {
        if (&f == &g || f.in_tail != g.in_tail) continue;
        if (f.at < g.at + g.width && g.at < f.at + f.width) return false;
      }
      unsigned absolutes = 0, targets = 0;
      for (unsigned i = 0; i < kParamCount; i++) {
        if (f.coeff[i] == 0) continue;
        if (kParamIsAbsolute[i]) {
          if (f.width != 8 || f.coeff[i] != 1) return false;
          absolutes++;
        } else if (i == kBack || i == kLanding) {
          if (f.coeff[i] != 1) return false;
          targets++;
        } else if (i == kAddress && f.coeff[i] != -1) {
          return false;
        }
      }
      if (f.width == 8 && (absolutes != 1 || f.coeff[kAddress] || f.coeff[kBack] ||
                           f.coeff[kLanding] || f.coeff[kRelocated])) {
        return false;
      }
      if (f.width == 4 && (targets > 1 || (targets == 1 && f.coeff[kAddress] != -1))) return false;
    }
    return true;
  }
};

EntryTrampolineBuilder::EntryTrampolineBuilder() = default;

EntryTrampolineBuilder::~EntryTrampolineBuilder() {
  for (Prototype* p : prototypes_)
    delete p;
}

EntryTrampolineBuilder::Prototype* EntryTrampolineBuilder::prototype_for(
    const EntryTrampolineSpec& spec, const DisplacementPlan& plan) {
  for (Prototype* p : prototypes_) {
    if (p->same_kind(spec, plan)) return p;
  }
  constexpr std::size_t kMaxKinds = 16;  // a handful in practice (per scheme, flags, landing)
  if (prototypes_.size() >= kMaxKinds) return nullptr;
  auto* p = new Prototype;
  prototypes_.push_back(p);
  p->flags_live = plan.flags_live;
  p->at_entry = plan.at_entry;
  p->save_vector = spec.save_vector;
  p->landing = spec.landing_target != 0;
  p->has_fast = spec.fast != nullptr;
  if (p->has_fast) {
    p->fast = *spec.fast;
    p->fast.consumers = 0;
  }
  p->dispatcher = spec.dispatcher;

  // The base build: this site's values, 5 bytes of dummy displaced instructions.
  ProtoValues base = values_of(spec, plan, 5);
  auto build_with = [&](const ProtoValues& v) {
    ProtoBuild b = dummy_build(spec, plan, v);
    return make_entry_trampoline(b.spec, b.plan);
  };
  auto a = build_with(base);
  if (!a.ok() || relocated_end(*a) != a->relocated_offset + 5) return p;
  const std::uint32_t head = a->relocated_offset;
  const std::uint32_t tail_at = relocated_end(*a);
  p->base = base;
  p->head.assign(a->code.begin(), a->code.begin() + head);
  p->tail.assign(a->code.begin() + tail_at, a->code.end());
  p->has_landing_offset = a->landing_offset != 0;
  if (p->has_landing_offset) {
    if (a->landing_offset < tail_at) return p;
    p->landing_in_tail = a->landing_offset - tail_at;
  }
  for (unsigned i = 0; i < kParamCount; i++) {
    if ((i == kConsumers && !spec.fast) || (i == kLanding && !spec.landing_target)) continue;
    ProtoValues moved = base;
    moved.v[i] += kParamDelta[i];
    auto b = build_with(moved);
    if (!b.ok() || b->relocated_offset != head || relocated_end(*b) != head + moved.v[kRelocated] ||
        b->code.size() - relocated_end(*b) != p->tail.size() ||
        (b->landing_offset != 0) != p->has_landing_offset ||
        (p->has_landing_offset && b->landing_offset - relocated_end(*b) != p->landing_in_tail)) {
      return p;
    }
    const std::span<const std::uint8_t> bb(b->code);
    if (!p->discover(p->head, bb.first(head), false, i) ||
        !p->discover(p->tail, bb.subspan(relocated_end(*b)), true, i)) {
      return p;
    }
  }
  if (!p->fields_make_sense()) return p;
  for (Prototype::Field& f : p->fields) {
    for (unsigned i = 0; i < kParamCount; i++) {
      if (f.coeff[i] != 0) f.term_param[f.terms++] = static_cast<std::uint8_t>(i);
    }
  }
  // The proof: every value moved at once, two ways, with other displaced lengths.
  for (std::uint64_t k : {2u, 3u}) {
    ProtoValues check = base;
    for (unsigned i = 0; i < kParamCount; i++) {
      if ((i == kConsumers && !spec.fast) || (i == kLanding && !spec.landing_target)) continue;
      check.v[i] += k * kParamDelta[i] + (kParamIsAbsolute[i] ? 0x10 * k : 0);
    }
    check.v[kRelocated] = 4 + k;  // 6 and 7 bytes
    ProtoBuild cb = dummy_build(spec, plan, check);
    auto want = make_entry_trampoline(cb.spec, cb.plan);
    Trampoline got;
    auto built = p->build(cb.spec, cb.plan, got, {});
    if (!want.ok() || !built.ok() || !*built || got.code != want->code ||
        got.relocated_offset != want->relocated_offset ||
        got.landing_offset != want->landing_offset || got.map != want->map) {
      return p;
    }
  }
  p->usable = true;
  return p;
}

Result<Trampoline> EntryTrampolineBuilder::build(const EntryTrampolineSpec& spec,
                                                 const DisplacementPlan& plan) {
  const bool landing = spec.landing_target != 0;
  if (landing && (plan.flags_live || !plan.at_entry)) return make_entry_trampoline(spec, plan);
  if (spec.run_at_ret) return make_entry_trampoline(spec, plan);  // few: no prototype
  Prototype* p = prototype_for(spec, plan);
  if (!p || !p->usable) return make_entry_trampoline(spec, plan);
  Trampoline t;
  t.map = std::move(spare_map_);
  auto built = p->build(spec, plan, t, std::move(spare_code_));
  if (!built.ok()) return built.error();
  if (!*built) return make_entry_trampoline(spec, plan);
  from_prototype_++;
  return t;
}

void EntryTrampolineBuilder::recycle(Trampoline&& t) {
  spare_code_ = std::move(t.code);
  spare_map_ = std::move(t.map);
}

}  // namespace hp::core
