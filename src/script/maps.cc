// MapSet (maps.h): a compiled program's maps, each thread's shards of them, and the hand-over
// of a region to the next MapSet and to `hotprobe run`; the maps' storage is in
// maps_table.cc, the region's mechanism in maps_region.cc.
#include "script/maps.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <utility>

#include "script/symbolize.h"

namespace hotprobe::script {

// ---------------------------------------------------------------------------------------
// MapSet

constinit thread_local MapSet::TlsCache MapSet::tls_cache_
    __attribute__((tls_model("initial-exec")));

namespace {
std::atomic<std::uint64_t> g_next_set_id{1};
std::atomic<std::uint64_t> g_next_thread_token{1};
thread_local std::uint64_t t_thread_token = 0;
}  // namespace

namespace {
// SharedRegion::use_next's hand-over to the next MapSet, and the agent's region.
std::mutex g_next_mu;
SharedRegion* g_next = nullptr;
bool g_next_reopen = false;
std::uint64_t g_next_hash = 0;
std::string g_reopen_error;
SharedRegion* g_agent_region = nullptr;  // adopt_shared_maps: lives as long as the process
bool g_agent_laid_out = false;

void privatize_in_child() {
  if (g_agent_region) g_agent_region->privatize();
}
// Registered before the agent's own fork handlers (this static initializer runs before the
// agent's constructor), so a fork child's first handler already sees private maps: the
// session's reset_maps() then cannot clear the parent's.
[[maybe_unused]] const int g_atfork = pthread_atfork(nullptr, nullptr, &privatize_in_child);
}  // namespace

MapSet::MapSet(std::vector<MapDesc> descs)
    : id_(g_next_set_id.fetch_add(1, std::memory_order_relaxed)), descs_(std::move(descs)) {
  SharedRegion* r;
  bool reopen;
  std::uint64_t hash;
  {
    std::lock_guard lock(g_next_mu);
    r = std::exchange(g_next, nullptr);
    reopen = g_next_reopen;
    hash = g_next_hash;
  }
  build(r, reopen, hash);
}

MapSet::MapSet(std::vector<MapDesc> descs, SharedRegion* region, bool reopen,
               std::uint64_t source_hash)
    : id_(g_next_set_id.fetch_add(1, std::memory_order_relaxed)), descs_(std::move(descs)) {
  build(region, reopen, source_hash);
}

namespace {
std::string check_region(const SharedRegion& r, const std::vector<MapDesc>& descs,
                         std::uint64_t hash) {
  const region::Header& h = r.header();
  if (h.state.load(std::memory_order_acquire) != 1)
    return "the program laid out no maps there (its agent did not start)";
  if (h.source_hash != hash) return "its maps belong to another script";
  if (h.map_count != descs.size() ||
      !r.contains(h.maps_off, descs.size() * sizeof(region::MapRecord)))
    return "its map table does not match the script";
  const auto* recs = r.at<region::MapRecord>(h.maps_off);
  for (std::size_t i = 0; i < descs.size(); ++i) {
    const region::MapRecord& m = recs[i];
    const MapDesc& d = descs[i];
    const bool sharded = is_aggregation(d.kind) || d.per_thread;
    bool same = r.contains(m.name_off, m.name_len) && m.name_len == d.name.size() &&
                std::memcmp(r.at<char>(m.name_off), d.name.data(), d.name.size()) == 0 &&
                m.kind == static_cast<std::uint8_t>(d.kind) && m.per_thread == d.per_thread &&
                m.sharded == sharded && m.nkeys == d.key_is_string.size() &&
                m.lhist_min == d.lhist_min && m.lhist_max == d.lhist_max &&
                m.lhist_step == d.lhist_step;
    for (std::size_t k = 0; same && k < d.key_is_string.size(); ++k)
      same = m.key_is_string[k] == static_cast<std::uint8_t>(d.part(k));
    if (!same) return "map " + d.name + " does not match the script";
  }
  return {};
}
}  // namespace

void MapSet::build(SharedRegion* region, bool reopen, std::uint64_t hash) {
  const std::size_t n = descs_.size();
  agg_.resize(n);
  plain_.resize(n);
  region::MapRecord* recs = nullptr;
  if (region && reopen) {
    std::string why = check_region(*region, descs_, hash);
    {
      std::lock_guard lock(g_next_mu);
      g_reopen_error = why;
    }
    if (why.empty()) {
      recs = region->at<region::MapRecord>(region->header().maps_off);
      use_region_modules(*region);
    }
  } else if (region && region->header().state.load(std::memory_order_acquire) == 0) {
    // Lay the maps out: records, names, then state = 1 (release) makes them readable.
    region::Header& h = region->header();
    const std::uint64_t off =
        region->alloc(std::max<std::size_t>(1, n) * sizeof(region::MapRecord));
    recs = region->at<region::MapRecord>(off);
    for (std::size_t i = 0; recs && i < n; ++i) {
      const MapDesc& d = descs_[i];
      region::MapRecord& m = recs[i];
      const std::uint64_t name = region->alloc(d.name.size() + 1);
      if (!name) {
        recs = nullptr;
        break;
      }
      std::memcpy(region->at<char>(name), d.name.data(), d.name.size());
      m.name_off = name;
      m.name_len = static_cast<std::uint32_t>(d.name.size());
      m.kind = static_cast<std::uint8_t>(d.kind);
      m.per_thread = d.per_thread;
      m.sharded = is_aggregation(d.kind) || d.per_thread;
      m.nkeys = static_cast<std::uint8_t>(d.key_is_string.size());
      for (std::size_t k = 0; k < d.key_is_string.size() && k < kMaxKeyParts; ++k)
        m.key_is_string[k] = static_cast<std::uint8_t>(d.part(k));
      m.lhist_min = d.lhist_min;
      m.lhist_max = d.lhist_max;
      m.lhist_step = d.lhist_step;
    }
    if (recs) {
      h.map_count = static_cast<std::uint32_t>(n);
      h.maps_off = off;
      h.source_hash = hash;
      h.pid = static_cast<std::uint32_t>(::getpid());
      h.state.store(1, std::memory_order_release);
      if (region == g_agent_region) g_agent_laid_out = true;
      // Keys printed through symbols, and string or tuple values that may hold a usym
      // value: named after the process has exited too.
      if (std::any_of(descs_.begin(), descs_.end(), [](const MapDesc& d) {
            return d.has_symbols() || d.kind == ValueKind::string || d.kind == ValueKind::tuple;
          }))
        publish_modules(*region);
    }
  }
  for (std::size_t i = 0; i < n; ++i) {
    const bool sharded = is_aggregation(descs_[i].kind) || descs_[i].per_thread;
    if (recs && sharded) {
      agg_[i] = std::make_unique<AggMap>(descs_[i], region, &recs[i], reopen);
    } else if (recs) {
      plain_[i] = std::make_unique<PlainMap>(descs_[i], region, &recs[i], reopen);
    } else if (sharded) {
      agg_[i] = std::make_unique<AggMap>(descs_[i]);
    } else {
      plain_[i] = std::make_unique<PlainMap>(descs_[i]);
    }
  }
}

MapSet::~MapSet() {
  // A thread's cache may still name this set; ids are never reused, so it never matches
  // again. Clear it for the destroying thread anyway (cheap).
  if (tls_cache_.set_id == id_) tls_cache_ = {};
}

MapSet::ThreadShards* MapSet::local_slow() {
  if (t_thread_token == 0) t_thread_token = g_next_thread_token.fetch_add(1);
  std::lock_guard lock(threads_mu_);
  ThreadShards* ts = nullptr;
  for (auto& [token, shards] : threads_)
    if (token == t_thread_token) ts = shards.get();
  if (!ts) {
    auto owned = std::make_unique<ThreadShards>();
    owned->set_id = id_;
    owned->shards.resize(descs_.size(), nullptr);
    for (std::size_t i = 0; i < descs_.size(); ++i)
      if (agg_[i]) owned->shards[i] = agg_[i]->new_shard();
    ts = owned.get();
    threads_.emplace_back(t_thread_token, std::move(owned));
  }
  tls_cache_ = {id_, ts};
  return ts;
}

void MapSet::clear(std::size_t i) {
  if (agg_[i]) {
    agg_[i]->clear();
  } else {
    plain_[i]->clear();
  }
}

void MapSet::zero(std::size_t i) {
  if (agg_[i]) {
    agg_[i]->zero();
  } else {
    plain_[i]->zero();
  }
}

std::vector<Row> MapSet::snapshot(std::size_t i) {
  return agg_[i] ? agg_[i]->snapshot() : plain_[i]->snapshot();
}

// ---------------------------------------------------------------------------------------
// The hand-over to the next MapSet, and `hotprobe run`'s process-wide region (the region
// itself: maps_region.cc)

void SharedRegion::use_next(SharedRegion* r, bool reopen, std::uint64_t source_hash) {
  std::lock_guard lock(g_next_mu);
  g_next = r;
  g_next_reopen = reopen;
  g_next_hash = source_hash;
  g_reopen_error.clear();
}

std::string SharedRegion::reopen_error() {
  std::lock_guard lock(g_next_mu);
  return g_reopen_error;
}

bool adopt_shared_maps(std::string_view source) {
  const char* v = std::getenv(SharedRegion::kEnvFd);
  if (!v) return false;
  char* end = nullptr;
  const long fd = std::strtol(v, &end, 10);
  ::unsetenv(SharedRegion::kEnvFd);  // programs this one runs start without it
  if (g_agent_region || end == v || *end || fd < 0 || fd > INT32_MAX) return false;
  std::string error;
  auto r = SharedRegion::open(static_cast<int>(fd), &error);
  if (!r) return false;          // hotprobe then finds no maps laid out and says so
  g_agent_region = r.release();  // for the process's life: hit paths point into it
  SharedRegion::use_next(g_agent_region, false, source_hash(source));
  return true;
}

bool shared_maps_complete() {
  return g_agent_region && g_agent_laid_out && region_maps_complete(*g_agent_region);
}

bool hand_over_end_output(std::string& text) {
  return shared_maps_complete() && hand_over_end_output(*g_agent_region, text);
}

void set_shared_maps_phase(std::uint32_t phase) {
  if (g_agent_region && g_agent_laid_out) set_maps_phase(*g_agent_region, phase);
}

void mark_shared_maps_channel_lost() noexcept {
  if (g_agent_region && g_agent_laid_out) mark_channel_lost(*g_agent_region);
}

}  // namespace hotprobe::script