// Maps as data: how a --follow-forks child's maps reach `hotprobe run`, which merges them
// with PROGRAM's into one print (docs/design/agent.md, "Forks").
//
//   auto prog = compile_open(source, options);        // a Program whose maps are reachable
//   for (auto& m : encode_map_data(*prog->runtime().maps)) send(encode(Msg::maps, m));
//   ...                                                 // hotprobe run:
//   MapRows rows(set.size());
//   decode_map_data(payload, set, rows);               // every row of the child
//   std::string text = print_merged(set, format, rows); // PROGRAM's rows + the children's
//
// A row is a map's key and value words (MapDesc's layouts); a payload is u32 map index, u32
// row count, then each row's key words and value words (u64, little-endian), one map per
// payload, several payloads for a map larger than a message. Aggregations merge as their
// kind does (count, sum, avg, stats, hist, lhist add; min and max compare); a plain value
// set in several processes keeps the first one merged (PROGRAM's, then the children's in
// the order their data arrived).
//
// Header-only: the agent and the CLI include it; both link the script library.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "agent/protocol.h"
#include "script/check.h"
#include "script/eval.h"
#include "script/maps.h"
#include "script/output.h"
#include "script/program.h"

namespace hp::agent {

namespace script = hotprobe::script;

// A compiled script, as Program::compile makes it, with its Runtime (and so its MapSet) in
// reach: the agent encodes a child's maps from it, hotprobe run merges into it.
class OpenProgram final : public script::Program {
 public:
  explicit OpenProgram(std::unique_ptr<script::Runtime> rt)
      : rt_(rt.get()), program_(script::program_of(std::move(rt))) {}
  script::Runtime& runtime() { return *rt_; }

  std::span<const script::Probe> probes() const override { return program_->probes(); }
  hotprobe::ProbeSpec spec(std::size_t index) override { return program_->spec(index); }
  void bind(script::Sink* sink) override { program_->bind(sink); }
  void run_begin() override { program_->run_begin(); }
  void run_end() override { program_->run_end(); }
  void run_interval(std::size_t index) override { program_->run_interval(index); }
  std::string print_maps() override { return program_->print_maps(); }
  bool exited() const override { return program_->exited(); }
  void set_active(bool active) override { program_->set_active(active); }
  void reset_maps() override { program_->reset_maps(); }
  std::uint64_t read_faults() const override { return program_->read_faults(); }

 private:
  script::Runtime* rt_;  // owned by program_
  std::unique_ptr<script::Program> program_;
};

inline hotprobe::Result<std::unique_ptr<OpenProgram>> compile_open(
    std::string_view source, const script::CompileOptions& options) {
  auto ast = script::parse_and_check(source, options);
  if (!ast) return ast.error();
  auto rt = script::lower(std::move(*ast), options.format);
  if (!rt) return rt.error();
  return std::make_unique<OpenProgram>(std::move(*rt));
}

// Every row of every map of `set`, as payloads of at most kMaxMessage - 1 bytes.
inline std::vector<std::string> encode_map_data(script::MapSet& set) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < set.size(); ++i) {
    const auto& d = set.desc(i);
    const std::size_t row_bytes = 8u * (d.key_words() + d.value_words());
    const std::size_t per_msg = std::max<std::size_t>(1, (kMaxMessage - 1 - 8) / row_bytes);
    std::vector<script::Row> rows = set.snapshot(i);
    for (std::size_t first = 0; first < rows.size(); first += per_msg) {
      const std::size_t n = std::min(per_msg, rows.size() - first);
      std::string m;
      put<std::uint32_t>(m, static_cast<std::uint32_t>(i));
      put<std::uint32_t>(m, static_cast<std::uint32_t>(n));
      for (std::size_t r = first; r < first + n; ++r) {
        for (auto w : rows[r].key)
          put<std::uint64_t>(m, w);
        for (auto w : rows[r].value)
          put<std::uint64_t>(m, w);
      }
      out.push_back(std::move(m));
    }
  }
  return out;
}

// Rows of each map (index: map id), gathered from several processes.
using MapRows = std::vector<std::vector<script::Row>>;

// Appends one payload's rows to `rows` (sized set.size()); false when malformed.
inline bool decode_map_data(std::string_view payload, script::MapSet& set, MapRows& rows) {
  std::size_t pos = 0;
  auto map = get<std::uint32_t>(payload, pos);
  auto n = get<std::uint32_t>(payload, pos);
  if (!map || !n || *map >= set.size() || rows.size() != set.size()) return false;
  const auto& d = set.desc(*map);
  const std::uint32_t kw = d.key_words(), vw = d.value_words();
  if (payload.size() - pos != std::size_t{*n} * 8u * (kw + vw)) return false;
  for (std::uint32_t r = 0; r < *n; ++r) {
    script::Row row;
    row.key.resize(kw);
    row.value.resize(vw);
    for (auto& w : row.key)
      w = *get<std::uint64_t>(payload, pos);
    for (auto& w : row.value)
      w = *get<std::uint64_t>(payload, pos);
    rows[*map].push_back(std::move(row));
  }
  return true;
}

// `from` merged into `into` (one map's rows), key by key, as the map's kind merges.
inline void merge_rows(const script::MapDesc& d, std::vector<script::Row>& into,
                       const std::vector<script::Row>& from) {
  for (const auto& r : from) {
    auto it = std::find_if(into.begin(), into.end(),
                           [&](const script::Row& x) { return x.key == r.key; });
    if (it == into.end()) {
      into.push_back(r);
      continue;
    }
    auto& v = it->value;
    switch (d.kind) {
      case script::ValueKind::integer:
      case script::ValueKind::string:
        break;  // a plain value: the first one merged stays
      case script::ValueKind::min:
      case script::ValueKind::max: {
        if (!r.value[1]) break;
        const auto a = static_cast<std::int64_t>(r.value[0]);
        const auto b = static_cast<std::int64_t>(v[0]);
        const bool better = d.kind == script::ValueKind::min ? a < b : a > b;
        if (!v[1] || better) v[0] = r.value[0];
        v[1] = 1;
        break;
      }
      default:
        for (std::size_t i = 0; i < v.size() && i < r.value.size(); ++i)
          v[i] += r.value[i];
    }
  }
}

// The end-of-run dump of `set`'s maps merged with `extra` (the children's rows), laid out
// as Program::print_maps lays it out (maps in name order, bpftrace's text or json).
inline std::string print_merged(script::MapSet& set, script::OutputFormat format,
                                const MapRows& extra) {
  std::string out;
  if (format == script::OutputFormat::text) out += "\n\n";
  std::vector<std::size_t> order(set.size());
  for (std::size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  std::sort(order.begin(), order.end(),
            [&](std::size_t x, std::size_t y) { return set.desc(x).name < set.desc(y).name; });
  for (std::size_t i : order) {
    std::vector<script::Row> rows = set.snapshot(i);
    if (i < extra.size()) merge_rows(set.desc(i), rows, extra[i]);
    script::append_map(out, set.desc(i), std::move(rows), format);
  }
  return out;
}

}  // namespace hp::agent
