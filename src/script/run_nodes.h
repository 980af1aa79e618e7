// The run pass: the node functions a lowered script is made of (docs/design/script-
// runtime.md, "Lowering"). The lowerer (lower.cc) picks one per node; a hit runs them
// through Node::i / Node::s / SNode::fn (eval.h). Internal to the script layer.
// run_nodes.cc: values, builtins, operators, C types, control flow; run_maps.cc: map keys,
// reads, aggregations, assignments, delete/clear/zero; run_print.cc: print, printf,
// tuples, time, strftime, join, buf, exit.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

#include "hotprobe/probe.h"
#include "script/eval.h"

namespace hotprobe::script::nodes {

// Arithmetic: 64-bit two's complement; / and % unsigned (BPF's), 0 when dividing by zero;
// >> logical; comparisons signed (bpftrace 0.17).
inline std::uint64_t u(std::int64_t v) {
  return static_cast<std::uint64_t>(v);
}
inline std::int64_t s64(std::uint64_t v) {
  return static_cast<std::int64_t>(v);
}

// A compound assignment's or a folded chain's arithmetic operator `op` (an ast::BinaryOp)
// applied to x and y; y for any other operator. Out of line (run_nodes.cc): a call, not a
// switch copied into every caller.
std::int64_t apply_binop(std::int64_t op, std::int64_t x, std::int64_t y);

// `s` cut to kStrBytes - 1 bytes into `out`, NUL-ended; its length.
inline std::uint32_t copy_str(char* out, std::string_view s) {
  const std::size_t n = std::min<std::size_t>(s.size(), kStrBytes - 1);
  std::memcpy(out, s.data(), n);
  out[n] = 0;
  return static_cast<std::uint32_t>(n);
}

// name: both operands evaluated; name_k: the right operand is a literal, in imm.
std::int64_t i_add(const Node* n, Frame& f);
std::int64_t i_add_k(const Node* n, Frame& f);
std::int64_t i_sub(const Node* n, Frame& f);
std::int64_t i_sub_k(const Node* n, Frame& f);
std::int64_t i_mul(const Node* n, Frame& f);
std::int64_t i_mul_k(const Node* n, Frame& f);
std::int64_t i_div(const Node* n, Frame& f);
std::int64_t i_div_k(const Node* n, Frame& f);
std::int64_t i_mod(const Node* n, Frame& f);
std::int64_t i_mod_k(const Node* n, Frame& f);
std::int64_t i_shl(const Node* n, Frame& f);
std::int64_t i_shl_k(const Node* n, Frame& f);
std::int64_t i_shr(const Node* n, Frame& f);
std::int64_t i_shr_k(const Node* n, Frame& f);
std::int64_t i_lt(const Node* n, Frame& f);
std::int64_t i_lt_k(const Node* n, Frame& f);
std::int64_t i_le(const Node* n, Frame& f);
std::int64_t i_le_k(const Node* n, Frame& f);
std::int64_t i_gt(const Node* n, Frame& f);
std::int64_t i_gt_k(const Node* n, Frame& f);
std::int64_t i_ge(const Node* n, Frame& f);
std::int64_t i_ge_k(const Node* n, Frame& f);
std::int64_t i_ult(const Node* n, Frame& f);
std::int64_t i_ult_k(const Node* n, Frame& f);
std::int64_t i_ule(const Node* n, Frame& f);
std::int64_t i_ule_k(const Node* n, Frame& f);
std::int64_t i_ugt(const Node* n, Frame& f);
std::int64_t i_ugt_k(const Node* n, Frame& f);
std::int64_t i_uge(const Node* n, Frame& f);
std::int64_t i_uge_k(const Node* n, Frame& f);
std::int64_t i_eq(const Node* n, Frame& f);
std::int64_t i_eq_k(const Node* n, Frame& f);
std::int64_t i_ne(const Node* n, Frame& f);
std::int64_t i_ne_k(const Node* n, Frame& f);
std::int64_t i_band(const Node* n, Frame& f);
std::int64_t i_band_k(const Node* n, Frame& f);
std::int64_t i_bxor(const Node* n, Frame& f);
std::int64_t i_bxor_k(const Node* n, Frame& f);
std::int64_t i_bor(const Node* n, Frame& f);
std::int64_t i_bor_k(const Node* n, Frame& f);

std::int64_t i_const(const Node* n, Frame&);
std::uint32_t s_const(const Node* n, Frame&, char* out);
std::int64_t i_var(const Node* n, Frame& f);
std::uint32_t s_var(const Node* n, Frame& f, char* out);
template <int I>
std::int64_t i_arg(const Node*, Frame& f);
std::int64_t i_retval(const Node*, Frame& f);
std::int64_t i_reg(const Node* n, Frame& f);
std::int64_t i_tid(const Node*, Frame&);
std::int64_t i_pid(const Node*, Frame&);
std::int64_t i_nsecs(const Node*, Frame&);
std::int64_t i_elapsed(const Node*, Frame& f);
std::int64_t i_cpu(const Node*, Frame&);
std::int64_t i_uid(const Node*, Frame&);
std::int64_t i_gid(const Node*, Frame&);
std::uint32_t s_comm(const Node*, Frame&, char* out);
std::uint32_t s_probe(const Node*, Frame& f, char* out);
std::uint32_t s_func(const Node*, Frame& f, char* out);
std::int64_t i_land(const Node* n, Frame& f);
std::int64_t i_lor(const Node* n, Frame& f);
std::int64_t i_seq(const Node* n, Frame& f);
std::int64_t i_sne(const Node* n, Frame& f);
std::int64_t i_neg(const Node* n, Frame& f);
std::int64_t i_lnot(const Node* n, Frame& f);
std::int64_t i_bnot(const Node* n, Frame& f);
// A left-deep chain of at least kFoldChain integer operators, folded in one node.
inline constexpr std::size_t kFoldChain = 8;  // shorter chains keep a node per operator
std::int64_t i_fold(const Node* n, Frame& f);
std::int64_t i_ternary(const Node* n, Frame& f);
std::uint32_t s_ternary(const Node* n, Frame& f, char* out);
std::uint32_t s_str(const Node* n, Frame& f, char* out);
std::uint32_t s_str_of_str(const Node* n, Frame& f, char* out);
template <typename T>
std::int64_t i_cast(const Node* n, Frame& f);
template <typename T>
std::int64_t i_load(const Node* n, Frame& f);
std::int64_t i_load_bits(const Node* n, Frame& f);
std::uint32_t s_chars(const Node* n, Frame& f, char* out);
// Arrays and structs as values (script/layout.h; run_records.cc, and s_bytes in
// run_nodes.cc, the map reads in run_maps.cc): every one writes its n->bytes bytes and
// zeros after them to kStrBytes, and returns n->bytes.
std::uint32_t s_bytes(const Node* n, Frame& f, char* out);  // read at a + imm
std::uint32_t s_var_bytes(const Node* n, Frame& f, char* out);
std::uint32_t s_map_read_bytes(const Node* n, Frame& f, char* out);
std::uint32_t s_tid_read_bytes(const Node* n, Frame& f, char* out);
// The bytes [imm + b, imm + b + bytes) of n->a's copy (b: a variable index's offset, or null).
std::uint32_t s_rec_slice(const Node* n, Frame& f, char* out);
std::uint32_t s_rec_chars(const Node* n, Frame& f, char* out);  // the slice as a string
// An integer of key_words bytes (is_signed) at imm + b of n->a's copy; a bit field when
// bit_width is not 0. Outside the copy: 0.
std::int64_t i_rec_load(const Node* n, Frame& f);
// An array's variable index (a): past the last element (imm, compared unsigned) writes
// bpftrace's out-of-bounds warning (text, rendered when lowered) to the output; the index.
std::int64_t i_index_oob(const Node* n, Frame& f);
// A record the checker makes (`args` as a whole, a named tuple, a tuple in a tuple) of
// n->bytes bytes: each of n->keys is a part, its value `a` copied to offset imm (an
// integer: its key_words low bytes; a string or a copy: its `bytes` first bytes).
std::uint32_t s_pack(const Node* n, Frame& f, char* out);
std::int64_t i_req(const Node* n, Frame& f);  // == of two copies (all kStrBytes bytes)
std::int64_t i_rne(const Node* n, Frame& f);
// Copies wider than kStrBytes (at most kMaxRecBytes, maps.h): the same nodes writing and
// reading record_span(bytes) bytes (a $variable's consecutive string slots, the map's
// record_span words), their buffers on the probed thread's stack. The lowering picks them
// by the copy's size, so a copy of at most kStrBytes runs the nodes above, unchanged.
std::uint32_t s_bytes_wide(const Node* n, Frame& f, char* out);
std::uint32_t s_var_bytes_wide(const Node* n, Frame& f, char* out);
std::uint32_t s_map_read_wide(const Node* n, Frame& f, char* out);
std::uint32_t s_tid_read_wide(const Node* n, Frame& f, char* out);
std::uint32_t s_rec_slice_wide(const Node* n, Frame& f, char* out);  // n->a is the wide copy
std::uint32_t s_rec_chars_wide(const Node* n, Frame& f, char* out);
std::int64_t i_rec_load_wide(const Node* n, Frame& f);
std::int64_t i_req_wide(const Node* n, Frame& f);
std::int64_t i_rne_wide(const Node* n, Frame& f);
std::int64_t i_print_wide(const Node* n, Frame& f);  // print() of a wide copy
bool st_map_wide(const SNode* s, Frame& f);          // @m[k] = a wide copy
bool st_tid_wide(const SNode* s, Frame& f);
bool st_expr_wide(const SNode* s, Frame& f);  // a wide copy as a statement
// buf(P, N) (imm = N): a buffer record of n->bytes = 1 + N bytes, [N][the bytes at P],
// zeros after it to kStrBytes; unreadable memory reads as zeros (counted in read_faults).
// ustack(raw) as a key part (a record of n->bytes = 8 * (1 + imm) bytes): [frames, the
// return addresses], zeros after them.
std::uint32_t s_ustack_raw(const Node* n, Frame& f, char* out);
std::uint32_t s_buf_bytes(const Node* n, Frame& f, char* out);
std::uint32_t s_buf_str(const Node* n, Frame& f, char* out);  // buf("STR", N): the string's
std::int64_t i_map_read(const Node* n, Frame& f);
std::uint32_t s_map_read(const Node* n, Frame& f, char* out);
std::int64_t i_agg_read(const Node* n, Frame& f);
std::int64_t i_tid_read(const Node* n, Frame& f);
std::uint32_t s_tid_read(const Node* n, Frame& f, char* out);
bool st_count(const SNode* s, Frame& f);
bool st_sum(const SNode* s, Frame& f);
bool st_avg(const SNode* s, Frame& f);
template <bool kMin>
bool st_minmax(const SNode* s, Frame& f);
bool st_hist(const SNode* s, Frame& f);
bool st_lhist(const SNode* s, Frame& f);
std::int64_t i_value_of_call(const Node* n, Frame& f);
bool st_var_int(const SNode* s, Frame& f);
bool st_var_str(const SNode* s, Frame& f);
// Tuples: n->keys are the elements. i_tuple evaluates them for their effect; st_var_tuple
// stores them in the target's element slots (target->keys[k]->imm); i_print_tuple prints
// n->a's.
bool st_var_tuple(const SNode* s, Frame& f);
// @m[k] = (a, b, ...): the elements packed as MapDesc::value_is_string lays them out.
bool st_map_tuple(const SNode* s, Frame& f);
bool st_tid_tuple(const SNode* s, Frame& f);
std::int64_t i_tuple(const Node* n, Frame& f);
// An element of a tuple read from a map: the words at imm of the value of map access n->a
// (plain or per-thread map); a copy of n->bytes.
std::int64_t i_map_tuple_int(const Node* n, Frame& f);
std::uint32_t s_map_tuple_str(const Node* n, Frame& f, char* out);
std::uint32_t s_map_tuple_bytes(const Node* n, Frame& f, char* out);
std::int64_t i_tid_tuple_int(const Node* n, Frame& f);
std::uint32_t s_tid_tuple_str(const Node* n, Frame& f, char* out);
std::uint32_t s_tid_tuple_bytes(const Node* n, Frame& f, char* out);
std::int64_t i_print_tuple(const Node* n, Frame& f);
bool st_map_int(const SNode* s, Frame& f);
bool st_map_str(const SNode* s, Frame& f);
bool st_tid_int(const SNode* s, Frame& f);
bool st_tid_str(const SNode* s, Frame& f);
bool st_expr(const SNode* s, Frame& f);
bool st_var_compound(const SNode* s, Frame& f);
bool st_map_compound(const SNode* s, Frame& f);
std::int64_t i_incdec_var(const Node* n, Frame& f);
bool st_tid_compound(const SNode* s, Frame& f);
std::int64_t i_incdec_tid(const Node* n, Frame& f);
std::int64_t i_incdec_map(const Node* n, Frame& f);
std::int64_t i_delete(const Node* n, Frame& f);
std::int64_t i_delete_tid(const Node* n, Frame& f);
std::int64_t i_clear(const Node* n, Frame& f);
std::int64_t i_zero(const Node* n, Frame& f);
std::int64_t i_print_map(const Node* n, Frame& f);
std::int64_t i_print_value(const Node* n, Frame& f);
std::int64_t i_printf(const Node* n, Frame& f);
// printf's format (n->format) with its arguments (n->keys) into `text`; `escape`: %s and
// %c as append_text_escaped writes them. No allocation when `text` has room.
void format_call(const Node* n, Frame& f, std::string& text, bool escape);
std::int64_t i_time(const Node* n, Frame& f);
std::uint32_t s_strftime(const Node* n, Frame& f, char* out);
std::int64_t i_join(const Node* n, Frame& f);
std::int64_t i_exit(const Node*, Frame& f);
bool st_exit(const SNode* s, Frame& f);
bool run_block(const std::vector<SNode>& body, Frame& f);
bool st_if(const SNode* s, Frame& f);
bool st_unroll(const SNode* s, Frame& f);
bool st_return(const SNode*, Frame&);

// A probe's handler (ProbeSpec::on_entry / on_return): runs the probe's action.
void on_hit(Hit& hit);

}  // namespace hotprobe::script::nodes
