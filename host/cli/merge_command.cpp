// `revmerge merge`'s command line: its options, and a config of one document or several.

#include <string>
#include <vector>

#include "commands.hpp"
#include "merge_args.hpp"
#include "merge_config.hpp"

namespace revmerge::cli {
namespace {

void run_merge(const MergeArgs& args) {
  if (args.config.empty()) return run_one(args, MergeConfig{});
  auto cfgs = read_merge_configs(args.config);
  if (cfgs.size() > 1) return run_documents(args, std::move(cfgs));
  run_one(args, cfgs.front());
}

}  // namespace

void add_merge_command(CLI::App& app) {
  static MergeArgs args;
  args = {};  // each command line starts from the defaults (the Python package runs many)
  auto* cmd = app.add_subcommand(
      "merge", "Merge LoRA adapters or fine-tuned models (RMM: into a reversible bundle; "
               "classic methods: into one adapter or model)");
  auto& opt = args.opt;
  cmd->add_option("INPUT", args.inputs,
                  "PEFT adapter folders (or, for the classic methods, full model folders); each "
                  "task is named after its folder");
  opt["--method"] = cmd->add_option("--method", args.method,
      "rmm (default), auto (per module the best of RMM per side, each task's own truncation "
      "and bases shared by the tasks under --storage), rank (truncations only), linear, task_arithmetic, ties, dare_linear, "
      "dare_ties, magnitude_prune, cat, svd, slerp, nearswap, model_stock, breadcrumbs, breadcrumbs_ties, della, "
      "della_linear, sce, nuslerp, multislerp, karcher, ram, ramplus_tl, arcee_fusion, "
      "passthrough");
  opt["--basis"] = cmd->add_option("--basis,-p", args.basis,
      "RMM basis size P, 1 .. n − 1 (auto: the one P it weighs; default every P up to 8, then powers of 2, below n)");
  opt["--storage"] = cmd->add_option("--storage", args.storage,
      "auto, rank: what the bundle may store, as a fraction of the adapters' numbers (0.25, "
      "25%) or a size in the stored dtype (2GiB)");
  opt["--representations"] = cmd->add_option("--representations", args.representations,
      "auto: the representations it weighs per module, comma-separated: rmm, rank, shared_rows "
      "(a row basis), shared (row and column bases) (default all; without rank, truncations "
      "only where nothing listed fits)");
  opt["--timings"] = cmd->add_flag("--timings", args.timings,
      "auto, rank: print where the time went, step by step (wall seconds summed over the modules and "
      "this process's workers), to stderr");
  opt["--objective"] = cmd->add_option("--objective", args.objective,
      "auto, rank under --storage: what the budget lowers, mean (the mean task's relative delta "
      "error, default) or max (the worst task's)");
  opt["--max-error"] = cmd->add_option("--max-error", args.max_error,
      "auto, rank instead of --storage: the largest relative delta error any task may have in "
      "any module; each module stored as cheaply as that allows");
  opt["--out"] = cmd->add_option("--out,-o", args.out, "folder to create (bundle, adapter or model)");
  cmd->add_option("--config", args.config,
                  "YAML/JSON file naming the tasks (revmerge's tasks: [{name, adapter}] or "
                  "mergekit's models: [{model, parameters}]) and option defaults; several YAML "
                  "documents (mergekit-mega) are merges run in turn, each into its out_path");
  opt["--dtype"] = cmd->add_option("--dtype", args.dtype,
      "output dtype: f32, f16, bf16 (default: RMM bundles and full models the inputs', "
      "other adapters f32)");
  opt["--mode"] = cmd->add_option("--mode", args.mode,
      "LoRA inputs: separate (merge the A's and the B's, as PEFT) or combined (merge the "
      "products BA, then re-compress or write a full model)");
  opt["--weights"] = cmd->add_option("--weights", args.weights,
                                     "one weight per task, comma-separated (default 1)");
  opt["--density"] = cmd->add_option("--density", args.densities,
      "fraction kept by TIES / DARE / DELLA / breadcrumbs / magnitude pruning: one value, or "
      "one per task (comma-separated)");
  opt["--gamma"] = cmd->add_option("--gamma", args.gammas,
      "breadcrumbs: fraction of largest magnitudes dropped as outliers: one value, or one per "
      "task (default 0.01)");
  opt["--epsilon"] = cmd->add_option("--epsilon", args.epsilons,
      "della: keep probabilities run from density − epsilon (smallest magnitude in a row) to "
      "density + epsilon (largest): one value, or one per task (default 0.15); ram, ramplus_tl: "
      "the change below which an element counts as unchanged (default 1e-5)");
  opt["--select-topk"] = cmd->add_option("--select-topk", args.select_topk,
      "sce: fraction of elements kept by their variance across the tasks (default 1: all)");
  opt["--no-flatten"] = cmd->add_flag("--no-flatten", args.no_flatten,
      "nuslerp: interpolate each vector along the last axis instead of the whole tensor");
  opt["--row-wise"] = cmd->add_flag("--row-wise", args.row_wise,
      "nuslerp with --no-flatten: vectors along the first axis instead (mergekit's nuslerp_row_wise)");
  opt["--filter-wise"] = cmd->add_flag("--filter-wise", args.filter_wise,
      "model_stock: one angle per row (each vector along the last axis) instead of per tensor");
  opt["--eps"] = cmd->add_option("--eps", args.eps, "multislerp: norm guard (default 1e-8)");
  opt["--tol"] = cmd->add_option("--tol", args.tol, "karcher: convergence tolerance (default 1e-5)");
  opt["--max-iter"] = cmd->add_option("--max-iter", args.max_iter, "karcher: most iterations (default 10)");
  opt["--scale"] = cmd->add_option("--scale", args.scales,
      "passthrough: multiply the model's tensors by this (default 1)");
  opt["--ram-r"] = cmd->add_option("--ram-r", args.ram_r,
      "ramplus_tl: boost of each task's unique changes (mergekit's r, default 0.1)");
  opt["--ram-alpha"] = cmd->add_option("--ram-alpha", args.ram_alpha,
      "ramplus_tl: cap of the shared-to-unique ratio (mergekit's alpha, default 0.2)");
  opt["--lambda"] = cmd->add_option("--lambda", args.lambda, "scale of the merged delta (default 1)");
  opt["--t"] = cmd->add_option("--t", args.t,
      "slerp: where between the base (0) and the fine-tune (1) the merge lies; nearswap: the "
      "difference below which an element takes the fine-tune's value");
  opt["--majority-sign"] = cmd->add_option("--majority-sign", args.majority_sign,
      "TIES sign election: total (sum, default) or frequency (count)");
  opt["--normalize"] = cmd->add_flag("--normalize", args.normalize,
      "divide by the agreeing tasks (TIES) or the weights' sum (others; multislerp: weights "
      "normalised to sum 1, the default)");
  opt["--no-normalize"] = cmd->add_flag("--no-normalize", args.no_normalize, "do not divide");
  opt["--rescale"] = cmd->add_flag("--rescale", args.rescale,
      "rescale each task after its drop or trim (default for DARE and DELLA; full models: to "
      "the task's L1 norm, adapters: by 1 / density)");
  opt["--no-rescale"] = cmd->add_flag("--no-rescale", args.no_rescale, "do not rescale");
  opt["--seed"] = cmd->add_option("--seed", args.seed, "DARE's and DELLA's mask seed (default 0)");
  opt["--rank"] = cmd->add_option("--rank", args.rank,
      "rank of a re-compressed adapter (svd, combined mode; default: the largest input rank); "
      "rmm, auto and rank over full fine-tunes: the rank each task's delta is compressed to first");
  opt["--base"] = cmd->add_option("--base", args.base,
      "base model folder: for full-model inputs, and for --full-model");
  opt["--full-model"] = cmd->add_flag("--full-model", args.full_model,
      "adapters: write base + merged delta as a full model instead of an adapter");
  cmd->add_flag("--force", args.force, "replace an existing output folder");
  cmd->add_option("--threads", args.threads, "CPU threads (default: all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--device", args.device,
                  "cpu, cuda or auto (default: cuda when a GPU is usable; the classic methods stay on the CPU "
                  "unless given cuda, which runs every full-model merge (mergekit's methods and layer slices); "
                  "the classic merges of LoRA adapters run on the CPU only)");
  opt["--gpu"] = cmd->add_option("--gpu", args.gpu,
      "CUDA device index (default 0; under mpirun each rank of a machine its own: its rank there "
      "modulo the GPUs)")->check(CLI::NonNegativeNumber);
  opt["--gpus"] = cmd->add_option("--gpus", args.gpus,
      "rmm, auto, rank: several GPUs, e.g. 0,1,2,3 or all: one worker per entry (an index may "
      "repeat), each with its share of the modules and of --threads, --memory-budget being each "
      "worker's (default: half the free host memory divided among them); the bundle is the one "
      "GPU's bytes. Under mpirun: each rank's GPUs, every rank giving as many");
  opt["--shard-per-rank"] = cmd->add_flag("--shard-per-rank", args.shard_per_rank,
      "under mpirun (or --gpus): no file written by two workers. Bundles: each worker writes its "
      "tensors into a shard of its own, listed by bundle.safetensors.index.json, instead of all "
      "into the one file; models: each worker's tensors start a shard of the index (the same "
      "tensors, byte for byte). One worker: the usual output");
  opt["--allow-nonfinite"] = cmd->add_flag("--allow-nonfinite", args.allow_nonfinite,
                "RMM: merge adapters holding NaN or Inf instead of refusing them (the affected "
                "positions come out non-finite)");
  opt["--out-shard-size"] = cmd->add_option("--out-shard-size", args.out_shard_size,
      "full models: the largest safetensors shard written, e.g. 2GB or 1GiB (default 5GB, as "
      "transformers and mergekit; a larger tensor is a shard of its own)");
  opt["--memory-budget"] = cmd->add_option("--memory-budget", args.memory_budget,
      "host (and GPU) memory the merge may hold, e.g. 2GiB (default: half the free host "
      "memory, 90% of the free GPU memory). RMM: too small for one module is an error naming it; "
      "full models: tensors are merged in pieces that fit it");
  opt["--sequential"] = cmd->add_flag("--sequential", args.sequential,
      "RMM: one module at a time on one thread instead of the overlapped pipeline (same output)");
  cmd->add_flag("--json", args.json, "print the report as JSON");
  cmd->add_flag("--quiet,-q", args.quiet, "print nothing on success but warnings (to stderr)");
  cmd->callback([] { run_merge(args); });
}

}  // namespace revmerge::cli
