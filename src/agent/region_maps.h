// hotprobe's side of a map region (docs/design/script-runtime.md, "Maps shared with
// hotprobe"): the maps a traced process laid out in memory it shares with hotprobe, read
// and printed by hotprobe, exactly once, whether the process's agent made its final report
// or the process ended without one.
//
//   auto region = script::SharedRegion::create(bytes, &why);   // passed to the agent
//   ...                                                        // the session runs
//   RegionMaps r = read_region_maps(*region, source, copts, /*run_end=*/!done_seen, {});
//   if (r.read) print(r.text);                                 // END's output, then the maps
//
// Header-only, like map_data.h: the CLI includes it without linking the agent.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "agent/map_data.h"
#include "script/maps.h"

namespace hp::agent {

struct RegionMaps {
  bool laid_out = false;      // the agent laid its maps out in the region
  bool read = false;          // `text` holds END's output and the maps, printed from here
  bool channel_lost = false;  // the agent lost its channel and stopped tracing then
  std::uint64_t refused = 0;  // allocations that did not fit: the maps may miss entries
  std::string error;          // why the maps could not be read
  std::string text;
};

// The region's maps as the agent would have printed them. Nothing to print when the agent
// laid out nothing there, or sent the maps itself (kMapsPrinted). END's output: the
// program's when END ran there (kEndDone), else END runs here when `run_end` (the program
// ended without its final report, as bpftrace runs END in its own process). `extra`: rows
// of other processes merged into the print (followed children). `run_request`: what END's
// system() and cat() print when END runs here (a 'C' message's payload and the format).
using RequestRunner = std::string (*)(std::string_view payload, script::OutputFormat format);
inline RegionMaps read_region_maps(script::SharedRegion& region, std::string_view source,
                                   const script::CompileOptions& copts, bool run_end,
                                   const MapRows& extra, RequestRunner run_request = nullptr) {
  RegionMaps r;
  const script::region::Header& h = region.header();
  if (h.state.load(std::memory_order_acquire) != 1) return r;
  r.laid_out = true;
  const std::uint32_t phase = h.phase.load(std::memory_order_acquire);
  r.channel_lost = h.channel_lost.load(std::memory_order_acquire) != 0;
  if (phase == script::region::kMapsPrinted) return r;
  script::SharedRegion::use_next(&region, /*reopen=*/true, script::source_hash(source));
  auto prog = compile_open(source, copts);
  if (!prog) {  // it compiled before the session started; a file it names may be gone
    r.error = prog.error().message();
    return r;
  }
  if (std::string why = script::SharedRegion::reopen_error(); !why.empty()) {
    r.error = why;
    return r;
  }
  class TextSink final : public script::Sink {
   public:
    void write(std::string_view t) override { text.append(t); }
    void request_exit() override {}
    void request(Request kind, std::string_view t) override {
      if (run) text += run(std::string(1, static_cast<char>(kind)).append(t), format);
    }
    RequestRunner run = nullptr;
    script::OutputFormat format = script::OutputFormat::text;
    std::string text;
  } sink;
  sink.run = run_request;
  sink.format = copts.format;
  (*prog)->bind(&sink);
  if (phase == script::region::kEndDone) {
    if (region.contains(h.end_text_off, h.end_text_len))
      sink.text.assign(region.at<char>(h.end_text_off), h.end_text_len);
  } else if (run_end) {
    (*prog)->run_end();
  }
  sink.text += print_merged(*(*prog)->runtime().maps, copts.format, extra);
  r.text = std::move(sink.text);
  r.read = true;
  r.refused = h.refused.load(std::memory_order_relaxed);
  return r;
}

// $HOTPROBE_MAP_MEMORY: the size of a map region, in MiB (sparse: only what the maps use is
// ever allocated). False (and a message naming `command`) when malformed.
inline bool map_region_bytes(const char* command, std::size_t& bytes) {
  bytes = script::SharedRegion::kDefaultBytes;
  const char* m = std::getenv("HOTPROBE_MAP_MEMORY");
  if (!m || !*m) return true;
  errno = 0;
  char* end = nullptr;
  const unsigned long long mib = std::strtoull(m, &end, 10);
  if (errno != 0 || end == m || *end || mib < 1 || mib > (1ull << 20)) {
    std::fprintf(stderr,
                 "hotprobe %s: HOTPROBE_MAP_MEMORY='%s' is not a size in MiB from 1 to 1048576 "
                 "(the memory the maps share with the program; unset, it is %zu)\n",
                 command, m, script::SharedRegion::kDefaultBytes >> 20);
    return false;
  }
  bytes = static_cast<std::size_t>(mib) << 20;
  return true;
}

// HOTPROBE_SHARED_MAPS=0: no region, the maps travel over the channel only (the agent
// prints them at a normal end; nothing survives another end). Tests compare both ways.
inline bool shared_maps_wanted() {
  const char* v = std::getenv("HOTPROBE_SHARED_MAPS");
  return !v || std::string_view(v) != "0";
}

}  // namespace hp::agent
