// The protection schemes, one row each: the one list that everything enumerating them is
// generated from (the dispatcher's instantiations and per-scheme arrays, the names that
// --scheme and EngineOptions' to_string()/parse_scheme() use, the engine's start-up, the
// benchmarks' rows, the typed domain-contract suite), as rcutorture's rcu_torture_ops
// table and liburcu's flavour headers are for theirs.
//
// A row is (enumerator of hotprobe::Scheme, user-visible name, domain type, short name
// for test and benchmark labels, baseline). Rows are in enum order; a new scheme is an
// enumerator in include/hotprobe/probe.h and a row here (with_scheme()'s switch fails to
// build under -Werror while one is missing).
//
//   hp::sync::for_each_scheme([](auto s) { ... Scheme(s) ..., SchemeTraits<s>::Domain ... });
//   hp::sync::with_scheme(runtime_scheme, [](auto s) { return entry_dispatch<s>; });
#pragma once

#include <cstddef>
#include <string_view>
#include <type_traits>
#include <utility>

#include "base/assert.h"
#include "hotprobe/probe.h"
#include "sync/baselines.h"
#include "sync/percpu_rwsem.h"
#include "sync/srcu.h"
#include "sync/tasks_trace.h"

// X(enumerator, name, Domain, label, baseline)
#define HP_SYNC_SCHEMES(X)                                         \
  X(tasks_trace, "tasks-trace", TasksTrace, TasksTrace, false)     \
  X(srcu, "srcu", Srcu, Srcu, false)                               \
  X(srcu_fast, "srcu-fast", SrcuFast, SrcuFast, false)             \
  X(percpu_rwsem, "percpu-rwsem", PercpuRwsem, PercpuRwsem, false) \
  X(refcount, "refcount", RefcountDomain, Refcount, true)          \
  X(rwlock, "rwlock", RwlockDomain, Rwlock, true)

namespace hp::sync {

// What a scheme is, at compile time: SchemeTraits<hotprobe::Scheme::srcu>::Domain.
template <hotprobe::Scheme S>
struct SchemeTraits;

#define HP_SYNC_SCHEME_TRAITS(id, name_, Domain_, label_, baseline_) \
  template <>                                                        \
  struct SchemeTraits<hotprobe::Scheme::id> {                        \
    using Domain = Domain_;                                          \
    static constexpr std::string_view name = name_;                  \
    static constexpr std::string_view label = #label_;               \
    static constexpr bool baseline = baseline_;                      \
  };
HP_SYNC_SCHEMES(HP_SYNC_SCHEME_TRAITS)
#undef HP_SYNC_SCHEME_TRAITS

// The same at run time, in enum order.
struct SchemeInfo {
  hotprobe::Scheme scheme;
  std::string_view name;   // as the user writes it: --scheme, to_string(), parse_scheme()
  std::string_view label;  // CamelCase, for test and benchmark labels
  bool baseline;           // a comparison point (one shared count, a lock), not a design
};
inline constexpr SchemeInfo kSchemes[] = {
#define HP_SYNC_SCHEME_INFO(id, name_, Domain_, label_, baseline_) \
  {hotprobe::Scheme::id, name_, #label_, baseline_},
    HP_SYNC_SCHEMES(HP_SYNC_SCHEME_INFO)
#undef HP_SYNC_SCHEME_INFO
};
inline constexpr std::size_t kSchemeCount = std::size(kSchemes);

// Arrays indexed by a scheme (scheme_index(s) < kSchemeCount) rely on rows in enum order.
constexpr std::size_t scheme_index(hotprobe::Scheme s) noexcept {
  return static_cast<std::size_t>(s);
}
consteval bool schemes_in_enum_order() {
  for (std::size_t i = 0; i < kSchemeCount; i++) {
    if (scheme_index(kSchemes[i].scheme) != i) return false;
  }
  return true;
}
static_assert(schemes_in_enum_order(), "HP_SYNC_SCHEMES: rows must follow hotprobe::Scheme");

// A scheme as a type: converts to hotprobe::Scheme, and is usable as a template argument.
template <hotprobe::Scheme S>
using SchemeConstant = std::integral_constant<hotprobe::Scheme, S>;

// f(SchemeConstant<S>{}) for every scheme, in enum order.
template <class F>
constexpr void for_each_scheme(F&& f) {
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    (f(SchemeConstant<kSchemes[I].scheme>{}), ...);
  }
  (std::make_index_sequence<kSchemeCount>{});
}

// f(SchemeConstant<s>{}) for the run-time scheme s: the one switch over the schemes.
template <class F>
decltype(auto) with_scheme(hotprobe::Scheme s, F&& f) {
  switch (s) {
#define HP_SYNC_SCHEME_CASE(id, name_, Domain_, label_, baseline_) \
  case hotprobe::Scheme::id:                                       \
    return f(SchemeConstant<hotprobe::Scheme::id>{});
    HP_SYNC_SCHEMES(HP_SYNC_SCHEME_CASE)
#undef HP_SYNC_SCHEME_CASE
  }
  HP_DIE("not a hotprobe::Scheme value (parse_scheme() makes one from a name)");
}

template <template <class...> class List, class Indices>
struct SchemeDomainList;
template <template <class...> class List, std::size_t... I>
struct SchemeDomainList<List, std::index_sequence<I...>> {
  using type = List<typename SchemeTraits<kSchemes[I].scheme>::Domain...>;
};
// List<Domain...> over every scheme's domain type, in enum order (a typed test suite's
// ::testing::Types).
template <template <class...> class List>
using SchemeDomains = typename SchemeDomainList<List, std::make_index_sequence<kSchemeCount>>::type;

// The label of a domain type's scheme ("" for a type that is no scheme's domain).
template <class D>
constexpr std::string_view scheme_label() {
  std::string_view label;
  for_each_scheme([&](auto s) {
    if (std::is_same_v<typename SchemeTraits<s>::Domain, D>) label = SchemeTraits<s>::label;
  });
  return label;
}

}  // namespace hp::sync
