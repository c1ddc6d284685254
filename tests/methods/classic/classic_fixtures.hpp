#pragma once
// What the classic merges' tests share: the example adapters and model as tasks and options,
// a model's tensor read back in f64, and a refusal checked by its message with nothing written.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "revmerge/classic.hpp"
#include "revmerge/error.hpp"
#include "revmerge/hf_model.hpp"
#include "test_util.hpp"

namespace revmerge::classic_fixtures {

namespace fs = std::filesystem;
inline const fs::path kExamples = fs::path(REVMERGE_SOURCE_DIR) / "examples";

inline std::vector<TaskSource> example_tasks(std::size_t n) {
  std::vector<TaskSource> t;
  for (const auto* name : {"chat", "code", "math", "qa", "sentiment"})
    if (t.size() < n) t.push_back({name, kExamples / "adapters" / name});
  return t;
}

inline ClassicMergeOptions full_model_options(const test::TempDir& tmp, ClassicMethod method) {
  ClassicMergeOptions o;
  o.method = method;
  o.tasks = example_tasks(3);
  o.weights = {0.5, -1.0, 1.5};
  o.base = kExamples / "tiny-llama";
  o.full_model = true;
  o.out = tmp / "model";
  return o;
}

inline std::vector<double> read_f64(const HfModel& m, const std::string& name) {
  return m.checkpoint().at(name).file->read_f64(name);
}

inline void expect_refused(const ClassicMergeOptions& o, const std::string& needle) {
  try {
    merge_classic(o);
    FAIL() << "accepted; expected an error containing: " << needle;
  } catch (const error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(o.out)) << "output written after an error";
}

}  // namespace revmerge::classic_fixtures
