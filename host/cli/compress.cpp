// `revmerge compress`: a full fine-tune to a PEFT LoRA adapter by randomized SVD (PT-SVD).
#include <fmt/format.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "command_line.hpp"
#include "backend/registry.hpp"
#include "core/atomic_output.hpp"
#include "methods/lowrank/left_out.hpp"
#include "commands.hpp"
#include "output_checks.hpp"
#include "progress.hpp"
#include "run.hpp"
#include "revmerge/compress.hpp"
#include "revmerge/error.hpp"
#include "text_format.hpp"

namespace revmerge::cli {
namespace {

struct CompressArgs {
  CompressOptions o;
  std::string dtype = "f32", include, exclude, device = "auto";
  bool json = false, quiet = false;
  CLI::Option* gpu = nullptr;
};

void print_report(const CompressOptions& o, const CompressReport& r, bool json) {
  if (json) {
    nlohmann::ordered_json j;
    j["adapter"] = o.out.string();
    j["relative_error"] = r.relative_error;
    j["storage"] = r.storage;
    j["device"] = r.device;
    for (const auto& m : r.modules)
      j["modules"].push_back({{"path", m.path}, {"rank", m.rank}, {"relative_error", m.relative_error},
                              {"delta_norm", m.delta_norm}});
    j["left_out"] = nlohmann::ordered_json::array();
    for (const auto& t : r.left_out) j["left_out"].push_back({{"tensor", t.tensor}, {"why", t.why}});
    j["modules_to_save"] = r.modules_kept_whole;
    j["kept_whole"] = nlohmann::ordered_json::array();
    for (const auto& t : r.kept_whole) j["kept_whole"].push_back({{"tensor", t.tensor}, {"why", t.why}});
    report_out() << j.dump(1) << "\n";
    return;
  }
  std::int64_t lo = r.modules[0].rank, hi = lo;
  for (const auto& m : r.modules) lo = std::min(lo, m.rank), hi = std::max(hi, m.rank);
  report_out() << fmt::format("compressed {} modules into {} (rank {}) on {}, {:.4f} of the weights' "
                           "size; delta error ‖Δ − BA‖/‖Δ‖ = {:.4g} over all modules\n",
                           r.modules.size(), o.out.string(),
                           lo == hi ? std::to_string(hi) : fmt::format("{}–{}", lo, hi), r.device,
                           r.storage, r.relative_error);
  auto worst = r.modules;
  std::sort(worst.begin(), worst.end(), [](auto& a, auto& b) { return a.relative_error > b.relative_error; });
  for (std::size_t i = 0; i < std::min<std::size_t>(5, worst.size()); ++i)
    report_out() << fmt::format("  {:<40} rank {:>4}  error {:.4g}\n", worst[i].path, worst[i].rank,
                             worst[i].relative_error);
  if (!r.modules_kept_whole.empty())
    report_out() << fmt::format("kept whole (modules_to_save): {} modules, {}\n", r.modules_kept_whole.size(),
                                describe_left_out(r.kept_whole));
}

void run_compress(CompressArgs& args) {
  auto o = args.o;
  o.recipe = output_recipe();
  o.dtype = parse_float_dtype_option(args.dtype, "--dtype");
  o.device = parse_device_option(args.device);
  o.progress = module_progress(args.quiet || args.json, "compressing");
  if (!args.include.empty()) o.include = split_list(args.include);
  if (!args.exclude.empty()) o.exclude = split_list(args.exclude);
  o.peers = command_peers();
  if (args.gpu->count() == 0 && o.device != Device::cpu)
    if (const auto gpu = gpu_of_this_rank()) o.gpu = *gpu;
  warn_of_leftovers(o.out);
  if (o.overwrite) refuse_replacing_inputs(o.out, {o.base, o.model}, "--out", "--force");
  const auto r = compress_checkpoint(o);
  if (!args.quiet) print_report(o, r, args.json);
  report_out().flush();
  if (!r.left_out.empty())
    print_warning(fmt::format("the adapter does not carry {} where the fine-tune differs from the base "
                              "({}): base + adapter is not the fine-tune there",
                              describe_left_out(r.left_out),
                              o.save_changed ? "not modules PEFT can keep whole"
                                             : "it holds the compressed linear modules; --save-changed "
                                               "keeps the other changed modules whole"));
  // A kept tensor of another shape (a resized vocabulary) loads only into a base resized alike.
  for (const auto& t : r.kept_whole)
    if (t.why.starts_with("shape "))
      print_warning(fmt::format("{} is kept whole with {}: resize the base to match before PEFT loads the "
                                "adapter (e.g. model.resize_token_embeddings for a vocabulary)",
                                t.tensor, t.why));
  if (args.quiet) return;
  // What the report would leave a user to notice: modules the fine-tune did not change (their
  // factors are zero), and a rank at which the adapter outweighs the weights it stands for.
  std::size_t unchanged = 0;
  for (const auto& m : r.modules) unchanged += m.delta_norm == 0;
  if (unchanged > 0)
    std::cerr << fmt::format("note: {} of {} modules are identical in the fine-tune and the base; "
                             "their factors are zero\n", unchanged, r.modules.size());
  // A rank above a module's smaller dimension is capped to it (the factors are exact there).
  std::size_t capped = 0;
  std::int64_t lo = 0, hi = 0;
  for (const auto& m : r.modules)
    if (m.rank < o.rank && m.rank == std::min(m.in, m.out)) {
      lo = capped == 0 ? m.rank : std::min(lo, m.rank);
      hi = std::max(hi, m.rank);
      ++capped;
    }
  if (capped > 0)
    std::cerr << fmt::format("note: --rank {} is above the smaller dimension of {} of {} modules; "
                             "they are stored at that rank ({}), exactly\n",
                             o.rank, capped, r.modules.size(),
                             lo == hi ? std::to_string(lo) : fmt::format("{}–{}", lo, hi));
  if (r.storage > 1)
    std::cerr << fmt::format("note: at this rank the adapter holds {:.2f}× the numbers of the "
                             "weights it compresses\n", r.storage);
}

}  // namespace

void add_compress_command(CLI::App& app) {
  static CompressArgs args;
  args = {};  // each command line starts from the defaults (the Python package runs many)
  auto* cmd = app.add_subcommand(
      "compress", "Compress a full fine-tune to a PEFT LoRA adapter (randomized SVD of W_ft − W_base)");
  cmd->add_option("--base", args.o.base, "base model folder")->required();
  cmd->add_option("--model", args.o.model, "fine-tuned model folder")->required();
  cmd->add_option("--rank,-r", args.o.rank, "adapter rank (the largest, with --energy)")->required();
  cmd->add_option("--out,-o", args.o.out, "adapter folder to create")->required();
  cmd->add_option("--oversampling", args.o.oversampling, "sketch columns beyond the rank (default 8)");
  cmd->add_option("--power-iterations", args.o.power_iterations, "power iterations (default 2)");
  cmd->add_option("--energy", args.o.energy,
                  "per-module rank: the smallest keeping this fraction of ‖Δ‖² (≤ --rank; written "
                  "with rank_pattern)");
  cmd->add_option("--include", args.include, "modules to compress, comma-separated (q_proj,v_proj)");
  cmd->add_option("--exclude", args.exclude, "modules to skip, comma-separated");
  cmd->add_option("--dtype", args.dtype, "adapter dtype: f32 (default), f16, bf16");
  cmd->add_option("--seed", args.o.seed, "the sketch's seed (default 0)");
  cmd->add_option("--threads", args.o.threads, "BLAS threads (default: all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--device", args.device,
                  "cpu, cuda or auto (default: cuda when a GPU is usable; the deltas are formed "
                  "and solved there in f64)");
  args.gpu = cmd->add_option("--gpu", args.o.gpu,
                             "CUDA device index (default 0; under mpirun each rank of a machine its own)")
                 ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--save-changed", args.o.save_changed,
                "also keep the modules whose other tensors differ from the base's (embeddings, norms, "
                "the head) whole in the adapter, as PEFT's modules_to_save");
  cmd->add_flag("--force", args.o.overwrite, "replace an existing output folder");
  cmd->add_flag("--json", args.json, "print the report as JSON");
  cmd->add_flag("--quiet,-q", args.quiet, "print nothing on success but warnings (to stderr)");
  cmd->callback([] { run_compress(args); });
}

}  // namespace revmerge::cli
