// mergekit-mega configs: several YAML documents, each a merge into its own out_path, run in an
// order where every merge comes after the merges whose outputs it reads.

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <string>
#include <system_error>
#include <vector>

#include "command_line.hpp"
#include "merge_args.hpp"
#include "revmerge/error.hpp"
#include "text_format.hpp"

namespace revmerge::cli {

// mergekit-mega: a config of several documents, each a merge into its own out_path. A document
// that reads another's output runs after it; an output that already exists is kept, as
// mergekit-mega keeps it (--force merges it again), so that a run stopped half-way resumes.
void run_documents(const MergeArgs& args, std::vector<MergeConfig> cfgs) {
  const auto& file = args.config;
  const auto n = cfgs.size();
  const auto doc = [&](std::size_t i) {
    return file + " (document " + std::to_string(i + 1) + " of " + std::to_string(n) + ")";
  };
  if (args.given("--out"))
    throw usage_error("--out: " + file + " holds " + std::to_string(n) +
                      " merges (a mergekit-mega config), each into its own out_path");
  if (!args.inputs.empty())
    throw usage_error("INPUT: " + file + " holds " + std::to_string(n) + " merges that name their models");
  std::vector<std::filesystem::path> outs;
  for (std::size_t i = 0; i < n; ++i) {
    if (!cfgs[i].out) throw format_error(doc(i) + ": no out_path (each merge of a mergekit-mega config names its output)");
    outs.push_back(cfgs[i].out->lexically_normal());
    for (std::size_t j = 0; j < i; ++j)
      if (outs[j] == outs[i]) throw format_error(doc(i) + ": out_path " + outs[i].string() + " is document " +
                                                 std::to_string(j + 1) + "'s too");
  }
  std::vector<std::vector<std::size_t>> needs(n);
  for (std::size_t i = 0; i < n; ++i)
    for (const auto& p : config_inputs(cfgs[i]))
      for (std::size_t j = 0; j < n; ++j)
        if (outs[j] == p) needs[i].push_back(j);
  // The file's order, each document after the ones it reads.
  std::vector<std::size_t> order;
  std::vector<bool> done(n, false);
  while (order.size() < n) {
    bool moved = false;
    for (std::size_t i = 0; i < n; ++i)
      if (!done[i] && std::all_of(needs[i].begin(), needs[i].end(), [&](std::size_t j) { return done[j]; })) {
        order.push_back(i);
        done[i] = moved = true;
        break;
      }
    if (!moved) {
      const auto i = static_cast<std::size_t>(std::find(done.begin(), done.end(), false) - done.begin());
      throw format_error(doc(i) + ": reads an output that, through the other documents, needs its own (" +
                         outs[i].string() + "); the merges form a cycle");
    }
  }
  for (std::size_t k = 0; k < n; ++k) {
    const auto i = order[k];
    if (std::error_code ec; std::filesystem::exists(outs[i], ec) && !args.force) {
      if (!args.quiet) print_warning("kept " + outs[i].string() + " (" + doc(i) + "): it exists; --force merges it again");
      continue;
    }
    if (!args.quiet && !args.json) report_out() << "merge " << k + 1 << " of " << n << ": " << doc(i) << "\n";
    run_one(args, cfgs[i]);
  }
}

}  // namespace revmerge::cli
