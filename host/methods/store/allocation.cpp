#include "methods/store/allocation.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <queue>
#include <tuple>

namespace revmerge {
namespace {

using i64 = std::int64_t;

// Σ_{k ≥ from} of a descending list, summed from the small end (no cancellation).
double tail(const std::vector<double>& v, i64 from) {
  double s = 0;
  for (i64 k = static_cast<i64>(v.size()) - 1; k >= from; --k) s += v[k];
  return s;
}

// The truncation a module takes at multiplier λ: every direction worth more than λ per number.
ModuleChoice truncate_at(const ModuleOptions& m, double lambda) {
  ModuleChoice c;
  const double threshold = lambda * m.rank_unit;
  for (std::size_t i = 0; i < m.sigma_sq.size(); ++i) {
    const auto& s = m.sigma_sq[i];
    const double w = m.task_weight[i];
    i64 k = 0;
    while (m.truncations && k < static_cast<i64>(s.size()) && w * s[k] > threshold && s[k] > 0) ++k;
    c.kept.push_back(k);
    c.numbers += double(k) * m.rank_unit;
    c.error += w * tail(s, k);
  }
  return c;
}

// A module's own best choice at multiplier λ: its truncation, or a fixed option that costs less
// in error + λ · numbers.
ModuleChoice choose_at(const ModuleOptions& m, double lambda) {
  auto best = truncate_at(m, lambda);
  double value = best.error + lambda * best.numbers;
  for (std::size_t f = 0; f < m.fixed.size(); ++f) {
    const auto& o = m.fixed[f];
    const double v = o.error + lambda * o.numbers;
    if (v < value) {
      value = v;
      best = {static_cast<int>(f), {}, o.numbers, o.error};
    }
  }
  return best;
}

double total_numbers(const std::vector<ModuleChoice>& c) {
  double s = 0;
  for (const auto& x : c) s += x.numbers;
  return s;
}

std::vector<ModuleChoice> choose_all(const std::vector<ModuleOptions>& modules, double lambda) {
  std::vector<ModuleChoice> out;
  for (const auto& m : modules) out.push_back(choose_at(m, lambda));
  return out;
}

// A module's error under its choice, its truncation's from the tails.
void truncation_error(const ModuleOptions& m, ModuleChoice& c) {
  c.error = 0;
  for (std::size_t t = 0; t < c.kept.size(); ++t) c.error += m.task_weight[t] * tail(m.sigma_sq[t], c.kept[t]);
}

// Directions not yet kept, most valuable per number first, added while they fit.
void fill_leftover(const std::vector<ModuleOptions>& modules, std::vector<ModuleChoice>& choice,
                   double budget) {
  double used = total_numbers(choice);
  // (gain per number, module, task): ties go to the earlier module and task.
  using Entry = std::tuple<double, i64, i64>;
  const auto worse = [](const Entry& a, const Entry& b) {
    if (std::get<0>(a) != std::get<0>(b)) return std::get<0>(a) < std::get<0>(b);
    return std::tie(std::get<1>(a), std::get<2>(a)) > std::tie(std::get<1>(b), std::get<2>(b));
  };
  std::priority_queue<Entry, std::vector<Entry>, decltype(worse)> next(worse);
  const auto push = [&](i64 m, i64 t) {
    const auto& mo = modules[m];
    const auto k = choice[m].kept[t];
    const auto& s = mo.sigma_sq[t];
    if (mo.truncations && k < static_cast<i64>(s.size()) && s[k] > 0 && mo.rank_unit > 0)
      next.emplace(mo.task_weight[t] * s[k] / mo.rank_unit, m, t);
  };
  for (i64 m = 0; m < static_cast<i64>(modules.size()); ++m)
    if (choice[m].fixed < 0)
      for (i64 t = 0; t < static_cast<i64>(choice[m].kept.size()); ++t) push(m, t);
  while (!next.empty()) {
    const i64 m = std::get<1>(next.top()), t = std::get<2>(next.top());
    next.pop();
    const auto& mo = modules[m];
    if (used + mo.rank_unit > budget) continue;  // a smaller module's direction may still fit
    auto& c = choice[m];
    c.numbers += mo.rank_unit;
    used += mo.rank_unit;
    ++c.kept[t];
    push(m, t);
  }
  for (std::size_t m = 0; m < modules.size(); ++m)
    if (choice[m].fixed < 0) truncation_error(modules[m], choice[m]);
}

// What the multiplier leaves unspent (less than one module's step between options): modules move
// to a larger fixed option where it lowers their error and fits, the best error saved per
// number first, and the rest goes to directions again.
void upgrade_with_leftover(const std::vector<ModuleOptions>& modules, std::vector<ModuleChoice>& choice,
                           double budget) {
  for (;;) {
    const double left = budget - total_numbers(choice);
    double best_ratio = 0;
    std::size_t best_m = 0;
    int best_f = -1;
    for (std::size_t m = 0; m < modules.size(); ++m)
      for (std::size_t f = 0; f < modules[m].fixed.size(); ++f) {
        const auto& o = modules[m].fixed[f];
        const double extra = o.numbers - choice[m].numbers, saved = choice[m].error - o.error;
        if (extra <= 0 || extra > left || saved <= 0) continue;
        if (saved / extra > best_ratio) best_ratio = saved / extra, best_m = m, best_f = static_cast<int>(f);
      }
    if (best_f < 0) return;
    const auto& o = modules[best_m].fixed[best_f];
    choice[best_m] = {best_f, {}, o.numbers, o.error};
    fill_leftover(modules, choice, budget);
  }
}

// A module's truncation keeping its most valuable directions (weighted σ² each, all at
// rank_unit numbers) that fit in `numbers`: the best truncation of that size.
ModuleChoice truncate_within(const ModuleOptions& m, double numbers) {
  ModuleChoice c;
  c.kept.assign(m.sigma_sq.size(), 0);
  i64 count = 0;  // the directions that fit, at most all of them (none without truncations)
  if (m.truncations && m.rank_unit > 0) {
    for (const auto& s : m.sigma_sq) count += static_cast<i64>(s.size());
    if (numbers / m.rank_unit < double(count)) count = static_cast<i64>(std::floor(numbers / m.rank_unit));
  }
  for (; count > 0; --count) {
    std::size_t best = m.sigma_sq.size();
    double gain = 0;
    for (std::size_t t = 0; t < m.sigma_sq.size(); ++t) {
      const auto& s = m.sigma_sq[t];
      const auto k = static_cast<std::size_t>(c.kept[t]);
      if (k < s.size() && s[k] > 0 && m.task_weight[t] * s[k] > gain) gain = m.task_weight[t] * s[k], best = t;
    }
    if (best == m.sigma_sq.size()) break;
    ++c.kept[best];
    c.numbers += m.rank_unit;
  }
  truncation_error(m, c);
  return c;
}

// Each module in turn chooses again alone, within what the others leave of the budget: the
// fixed option or the truncation of least error that fits. The multiplier's choice is optimal
// only on the options' convex hull — a module whose fixed option is what the multiplier
// settled on may do better with a truncation or another option of the numbers left — and each
// move lowers the total error, so the rounds end.
void improve_module_by_module(const std::vector<ModuleOptions>& modules, std::vector<ModuleChoice>& choice,
                              double budget) {
  for (int round = 0; round < 16; ++round) {
    bool moved = false;
    for (std::size_t m = 0; m < modules.size(); ++m) {
      const double left = budget - (total_numbers(choice) - choice[m].numbers);
      const double now = choice[m].error;
      auto best = truncate_within(modules[m], left);
      for (std::size_t f = 0; f < modules[m].fixed.size(); ++f) {
        const auto& o = modules[m].fixed[f];
        if (o.numbers <= left && o.error < best.error) best = {static_cast<int>(f), {}, o.numbers, o.error};
      }
      // Strictly better by more than rounding: the rounds must not trade equal choices.
      if (best.error < now - 1e-12 * std::max(now, 1e-300)) choice[m] = std::move(best), moved = true;
    }
    if (!moved) return;
    fill_leftover(modules, choice, budget);
    upgrade_with_leftover(modules, choice, budget);
  }
}

// One direction of a truncated module: what keeping it is worth, and its numbers.
struct Direction {
  double value = 0, numbers = 0;
  i64 module = 0, task = 0;
};

// Moves between modules: a module takes another of its options (a fixed one, or its whole
// truncation) and the truncated modules pay for it — giving up their least valuable kept
// directions where it needs more numbers than are left, or keeping their most valuable others
// where it frees some — taken when the total error falls. The move a case like this needs: a
// module whose small fixed option the multiplier chose, while its truncation would fit by other
// modules giving up directions worth less than the truncation saves.
void exchange_between_modules(const std::vector<ModuleOptions>& modules, std::vector<ModuleChoice>& choice,
                              double budget) {
  const auto truncated = [&](std::size_t m) { return choice[m].fixed < 0 && modules[m].truncations; };
  // The walks' steps over all rounds, bounded so a store of very many modules and options
  // spends a fraction of a second here: past it the moves found so far stand (a count, not a
  // clock, so every worker stops at the same place).
  constexpr std::int64_t kMostSteps = std::int64_t{1} << 27;
  std::int64_t steps = 0;
  for (int round = 0; round < 64 && steps < kMostSteps; ++round) {
    // Kept directions, least worth per number first; the others, most worth first. A task's
    // directions come in order (descending σ²), so each list walks a task's from its edge.
    std::vector<Direction> kept, unkept;
    for (std::size_t m = 0; m < modules.size(); ++m) {
      if (!truncated(m)) continue;
      const auto& mo = modules[m];
      for (std::size_t t = 0; t < mo.sigma_sq.size(); ++t)
        for (std::size_t k = 0; k < mo.sigma_sq[t].size(); ++k) {
          const Direction d{mo.task_weight[t] * mo.sigma_sq[t][k], mo.rank_unit, static_cast<i64>(m),
                            static_cast<i64>(t)};
          (static_cast<i64>(k) < choice[m].kept[t] ? kept : unkept).push_back(d);
        }
    }
    const auto per_number = [](const Direction& d) { return d.value / d.numbers; };
    std::stable_sort(kept.begin(), kept.end(), [&](const Direction& x, const Direction& y) {
      return per_number(x) < per_number(y);
    });
    std::stable_sort(unkept.begin(), unkept.end(), [&](const Direction& x, const Direction& y) {
      return per_number(x) > per_number(y);
    });
    const double left = budget - total_numbers(choice);
    double smallest_unit = INFINITY, total_error = 0;
    for (std::size_t m = 0; m < modules.size(); ++m) {
      total_error += choice[m].error;
      if (truncated(m)) smallest_unit = std::min(smallest_unit, modules[m].rank_unit);
    }
    // What the other modules lose to free `need` numbers (infinite where they cannot), or gain
    // from `spare` numbers; the directions taken in `taken`.
    const auto walk_free = [&](i64 m, double need, std::vector<Direction>* taken) {
      double loss = 0;
      for (const auto& d : kept) {
        ++steps;
        if (need <= 0) break;
        if (d.module == m) continue;
        loss += d.value, need -= d.numbers;
        if (taken) taken->push_back(d);
      }
      return need <= 0 ? loss : INFINITY;
    };
    const auto walk_spend = [&](i64 m, double spare, std::vector<Direction>* taken) {
      double gain = 0;
      for (const auto& d : unkept) {
        ++steps;
        if (spare < smallest_unit) break;
        if (d.module == m || d.numbers > spare) continue;  // a task's next ones do not fit either
        gain += d.value, spare -= d.numbers;
        if (taken) taken->push_back(d);
      }
      return gain;
    };
    double best_net = 1e-12 * total_error;  // a move must gain more than rounding
    i64 best_m = -1;
    ModuleChoice best_alt;
    for (std::size_t m = 0; m < modules.size(); ++m) {
      const auto& mo = modules[m];
      std::vector<ModuleChoice> alternatives;
      for (std::size_t f = 0; f < mo.fixed.size(); ++f)
        if (static_cast<int>(f) != choice[m].fixed)
          alternatives.push_back({static_cast<int>(f), {}, mo.fixed[f].numbers, mo.fixed[f].error});
      if (choice[m].fixed >= 0 && mo.truncations) alternatives.push_back(truncate_within(mo, INFINITY));
      for (auto& alt : alternatives) {
        const double extra = alt.numbers - choice[m].numbers;
        // Needing numbers the others give up, a move saves at most what the module itself does.
        if (extra > left && choice[m].error - alt.error <= best_net) continue;
        const double cost = extra > left ? walk_free(static_cast<i64>(m), extra - left, nullptr)
                                         : -walk_spend(static_cast<i64>(m), left - extra, nullptr);
        const double net = choice[m].error - alt.error - cost;
        if (net > best_net) best_net = net, best_m = static_cast<i64>(m), best_alt = alt;
      }
    }
    if (best_m < 0) return;
    const double extra = best_alt.numbers - choice[best_m].numbers;
    std::vector<Direction> taken;
    const bool frees = extra > left;
    if (frees) walk_free(best_m, extra - left, &taken);
    else walk_spend(best_m, left - extra, &taken);
    choice[best_m] = best_alt;
    for (const auto& d : taken) {
      auto& c = choice[d.module];
      c.kept[d.task] += frees ? -1 : 1;
      c.numbers += frees ? -d.numbers : d.numbers;
    }
    for (std::size_t m = 0; m < modules.size(); ++m)
      if (truncated(m)) truncation_error(modules[m], choice[m]);
    fill_leftover(modules, choice, budget);
  }
}

}  // namespace

std::vector<ModuleChoice> allocate_budget(const std::vector<ModuleOptions>& modules, double budget) {
  auto best = choose_all(modules, 0.0);
  if (total_numbers(best) <= budget) return best;
  // λ large enough that every module keeps nothing: above any direction's gain per number and
  // above what any fixed option could save per number it stores.
  double hi = 0;
  for (const auto& m : modules) {
    double none = 0;
    for (std::size_t t = 0; t < m.sigma_sq.size(); ++t) {
      none += m.task_weight[t] * tail(m.sigma_sq[t], 0);
      if (m.truncations && !m.sigma_sq[t].empty() && m.rank_unit > 0)
        hi = std::max(hi, m.task_weight[t] * m.sigma_sq[t][0] / m.rank_unit);
    }
    for (const auto& f : m.fixed)
      if (f.numbers > 0) hi = std::max(hi, (none - f.error) / f.numbers);
  }
  hi = hi * 2 + 1e-300;
  double lo = 0;
  best = choose_all(modules, hi);
  for (int it = 0; it < 200 && hi - lo > 1e-15 * hi; ++it) {
    const double mid = 0.5 * (lo + hi);
    auto c = choose_all(modules, mid);
    if (total_numbers(c) <= budget) {
      hi = mid;
      best = std::move(c);
    } else {
      lo = mid;
    }
  }
  fill_leftover(modules, best, budget);
  upgrade_with_leftover(modules, best, budget);
  improve_module_by_module(modules, best, budget);
  exchange_between_modules(modules, best, budget);
  return best;
}

std::vector<ModuleChoice> allocate_max_error(const std::vector<ModuleOptions>& modules,
                                             double max_error) {
  std::vector<ModuleChoice> out;
  for (const auto& m : modules) {
    // The truncation that keeps the bound; without truncations, only a fallback where no fixed
    // option keeps it.
    ModuleChoice c;
    for (std::size_t t = 0; t < m.sigma_sq.size(); ++t) {
      const auto& s = m.sigma_sq[t];
      const double norm_sq = tail(s, 0), allowed = max_error * max_error * norm_sq;
      i64 k = 0;
      while (k < static_cast<i64>(s.size()) && tail(s, k) > allowed) ++k;
      c.kept.push_back(k);
      c.numbers += double(k) * m.rank_unit;
      c.error += m.task_weight[t] * tail(s, k);
    }
    int best = -1;
    for (std::size_t f = 0; f < m.fixed.size(); ++f) {
      const auto& o = m.fixed[f];
      if (o.worst_relative <= max_error && (m.truncations ? o.numbers < c.numbers : true) &&
          (best < 0 || o.numbers < m.fixed[best].numbers))
        best = static_cast<int>(f);
    }
    if (best >= 0 && (!m.truncations || m.fixed[best].numbers < c.numbers))
      c = {best, {}, m.fixed[best].numbers, m.fixed[best].error};
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace revmerge
