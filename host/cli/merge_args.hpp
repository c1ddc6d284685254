// `revmerge merge`: its command line (merge_command.cpp), one merge (merge.cpp) and a config of
// several (merge_documents.cpp).
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "merge_config.hpp"

namespace revmerge::cli {

struct MergeArgs {
  std::vector<std::string> inputs;
  std::string method = "rmm", dtype, config, mode = "separate", majority_sign = "total";
  std::int64_t basis = 0, rank = 0;
  std::uint64_t seed = 0;
  std::string weights, densities, gammas, epsilons, scales;
  double lambda = 1, t = 0, select_topk = 1;
  std::string out, base;
  bool force = false, json = false, quiet = false, allow_nonfinite = false, full_model = false;
  bool normalize = false, no_normalize = false, rescale = false, no_rescale = false;
  bool no_flatten = false, row_wise = false, filter_wise = false;
  double eps = 1e-8, tol = 1e-5, ram_r = 0.1, ram_alpha = 0.2;
  std::int64_t max_iter = 10;
  int threads = 0, gpu = 0;
  std::string device = "auto", gpus, memory_budget, storage, representations, objective = "mean", out_shard_size;
  double max_error = 0;
  bool sequential = false, shard_per_rank = false, timings = false;
  std::map<std::string, CLI::Option*> opt;
  bool given(const std::string& name) const { return opt.at(name)->count() > 0; }
};

/// The folders a config reads (its models, base, slices, tokenizer, MODEL+LORA parts).
std::vector<std::filesystem::path> config_inputs(const MergeConfig& c);

/// One merge: the command line's options over the config's (a document of it, or none).
void run_one(const MergeArgs& args, MergeConfig cfg);

/// mergekit-mega: several documents, each a merge into its own out_path.
void run_documents(const MergeArgs& args, std::vector<MergeConfig> cfgs);

}  // namespace revmerge::cli
