// Every classic method on LoRA adapters against what PEFT's add_weighted_adapter wrote for the
// same three adapters (tests/fixtures/golden/peft, made by tools/make_golden.py). DARE cases use
// the same mask: the script ran PEFT with revmerge's counter-based draw.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/json_file.hpp"
#include "revmerge/classic.hpp"
#include "revmerge/peft.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

const std::filesystem::path kRoot = std::filesystem::path(REVMERGE_FIXTURES) / "golden" / "peft";

// s · B A in double, row-major out × in.
std::vector<double> product(const PeftAdapter& a, const LoraModule& m) {
  const auto fa = a.read_a(m), fb = a.read_b(m);
  std::vector<double> d(static_cast<std::size_t>(m.out * m.in), 0.0);
  for (std::int64_t o = 0; o < m.out; ++o)
    for (std::int64_t k = 0; k < m.rank; ++k)
      for (std::int64_t i = 0; i < m.in; ++i)
        d[o * m.in + i] += m.scale * double(fb[o * m.rank + k]) * double(fa[k * m.in + i]);
  return d;
}

double max_abs(const std::vector<double>& v) {
  double r = 0;
  for (const auto x : v) r = std::max(r, std::fabs(x));
  return r;
}

struct GoldenCase {
  std::string name;
  nlohmann::json spec;
};

std::vector<GoldenCase> cases() {
  const auto j = parse_json_text(read_text_file(kRoot / "cases.json"), "cases.json");
  std::vector<GoldenCase> r;
  for (const auto& c : j["cases"]) r.push_back({c["name"].get<std::string>(), c});
  return r;
}

class PeftGolden : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(PeftGolden, MatchesPeft) {
  const auto& spec = GetParam().spec;
  test::TempDir tmp;
  ClassicMergeOptions o;
  o.method = parse_classic_method(spec["method"].get<std::string>());
  o.mode = spec["mode"] == "combined" ? LoraMergeMode::combined : LoraMergeMode::separate;
  for (const auto* t : {"t0", "t1", "t2"}) o.tasks.push_back({t, kRoot / "adapters" / t});
  o.weights = spec["weights"].get<std::vector<double>>();
  if (spec.contains("density")) o.densities = {spec["density"].get<double>()};
  if (spec.contains("seed")) o.seed = spec["seed"].get<std::uint64_t>();
  if (spec.contains("rank")) o.rank = spec["rank"].get<std::int64_t>();
  if (spec.value("majority_sign", "total") == "frequency") o.election = SignElection::count;
  o.out = tmp / "merged";
  merge_classic(o);

  const PeftAdapter ours(o.out), peft(kRoot / "out" / GetParam().name);
  ASSERT_EQ(ours.modules().size(), peft.modules().size());
  double worst = 0;
  for (const auto& pm : peft.modules()) {
    const auto* om = ours.find(pm.path);
    ASSERT_NE(om, nullptr) << pm.path;
    EXPECT_EQ(om->rank, pm.rank) << pm.path;
    const auto want = product(peft, pm), got = product(ours, *om);
    const double scale = std::max(max_abs(want), 1e-3);
    for (std::size_t i = 0; i < want.size(); ++i)
      worst = std::max(worst, std::fabs(want[i] - got[i]) / scale);
    if (spec["mode"] == "separate" && pm.scale == 1.0 && om->scale == 1.0) {
      // Separate merges are unique factor by factor, not only as products.
      const auto wa = peft.read_a(pm), ga = ours.read_a(*om);
      for (std::size_t i = 0; i < wa.size(); ++i) ASSERT_NEAR(ga[i], wa[i], 1e-5) << pm.path << " A " << i;
    }
  }
  RecordProperty("largest_relative_difference", std::to_string(worst));
  EXPECT_LE(worst, 1e-5) << "largest difference of the merged deltas, relative to the largest entry";
}

INSTANTIATE_TEST_SUITE_P(Cases, PeftGolden, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace revmerge
