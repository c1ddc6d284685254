"""The mergekit configs tools/make_golden.py runs (golden/mergekit/<case>.yml): each case's
method and parameters, as make_mergekit writes them into a YAML config for mergekit's run_merge."""

# Three full fine-tunes of a tiny Llama (ft0, ft1, ft2) on a base, float32.
MK_CASES = {
    "task_arithmetic": {"merge_method": "task_arithmetic", "parameters": {"lambda": 0.8},
                        "weights": [1.0, 0.5, -0.3]},
    "linear": {"merge_method": "linear", "weights": [1.0, 2.0, 1.0], "no_base": True},
    "ties": {"merge_method": "ties", "weights": [1.0, 0.7, 0.4], "densities": [0.5, 0.3, 0.7]},
    "ties_lambda": {"merge_method": "ties", "parameters": {"lambda": 0.5},
                    "weights": [1.0, 1.0, 1.0], "densities": [0.5, 0.5, 0.5]},
    "ties_unnormalized": {"merge_method": "ties", "parameters": {"normalize": False},
                          "weights": [1.0, 0.5, 0.5], "densities": [0.4, 0.4, 0.4]},
    "dare_ties": {"merge_method": "dare_ties", "weights": [1.0, 0.7, 0.4],
                  "densities": [0.6, 0.5, 0.7], "seed": 5},
    "dare_linear": {"merge_method": "dare_linear", "weights": [0.6, 0.3, 0.3],
                    "densities": [0.6, 0.6, 0.6], "seed": 11},
    "dare_linear_norescale": {"merge_method": "dare_linear", "parameters": {"rescale": False},
                              "weights": [1.0, 1.0, 1.0], "densities": [0.5, 0.5, 0.5], "seed": 2},
    "ties_rescale": {"merge_method": "ties", "parameters": {"rescale": True},
                     "weights": [1.0, 0.7, 0.4], "densities": [0.5, 0.3, 0.7]},
    "breadcrumbs": {"merge_method": "breadcrumbs", "weights": [1.0, 0.5, 0.8],
                    "densities": [0.6, 0.5, 0.7], "extra": {"gamma": [0.05, 0.1, 0.02]}},
    "breadcrumbs_dense": {"merge_method": "breadcrumbs", "weights": [1.0, 1.0, 1.0],
                          "densities": [0.95, 0.95, 0.95], "extra": {"gamma": [0.1, 0.1, 0.1]}},
    "breadcrumbs_ties": {"merge_method": "breadcrumbs_ties", "parameters": {"lambda": 0.9},
                         "weights": [1.0, 0.7, 0.4], "densities": [0.5, 0.4, 0.6],
                         "extra": {"gamma": [0.05, 0.05, 0.05]}},
    "della": {"merge_method": "della", "weights": [1.0, 0.7, 0.4], "densities": [0.5, 0.4, 0.6],
              "extra": {"epsilon": [0.1, 0.2, 0.15]}, "seed": 3},
    "della_norescale": {"merge_method": "della", "parameters": {"rescale": False},
                        "weights": [1.0, 1.0, 1.0], "densities": [0.5, 0.5, 0.5],
                        "extra": {"epsilon": [0.3, 0.3, 0.3]}, "seed": 8},
    "della_linear": {"merge_method": "della_linear", "parameters": {"lambda": 1.2},
                     "weights": [0.6, 0.3, 0.3], "densities": [0.6, 0.6, 0.6],
                     "extra": {"epsilon": [0.1, 0.1, 0.1]}, "seed": 13},
    "sce": {"merge_method": "sce"},
    "sce_topk": {"merge_method": "sce", "parameters": {"select_topk": 0.4}},
    "slerp": {"merge_method": "slerp", "models": ["ft0"], "parameters": {"t": 0.3}},
    "nearswap": {"merge_method": "nearswap", "models": ["ft1"], "parameters": {"t": 0.01}},
    "model_stock": {"merge_method": "model_stock"},
    "model_stock_filter_wise": {"merge_method": "model_stock", "parameters": {"filter_wise": True}},
    "nuslerp": {"merge_method": "nuslerp", "models": ["ft0", "ft2"], "weights": [1.0, None, 0.6]},
    "nuslerp_rows": {"merge_method": "nuslerp", "models": ["ft1", "ft2"], "no_base": True,
                     "weights": [None, 0.3, 0.7], "parameters": {"nuslerp_flatten": False}},
    "nuslerp_row_wise": {"merge_method": "nuslerp", "models": ["ft0", "ft1"],
                         "weights": [0.5, 0.5, None],
                         "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True}},
    "multislerp": {"merge_method": "multislerp", "weights": [1.0, 0.5, 0.8]},
    "multislerp_nobase": {"merge_method": "multislerp", "no_base": True, "weights": [0.2, 0.3, 0.5],
                          "parameters": {"normalize_weights": False}},
    "karcher": {"merge_method": "karcher"},
    "karcher_nobase": {"merge_method": "karcher", "no_base": True,
                       "parameters": {"max_iter": 4, "tol": 1e-6}},
    "ram": {"merge_method": "ram", "parameters": {"epsilon": 0.02}},
    "ram_default": {"merge_method": "ram"},
    "ramplus_tl": {"merge_method": "ramplus_tl", "parameters": {"epsilon": 0.025, "r": 0.5, "alpha": 0.9}},
    "arcee_fusion": {"merge_method": "arcee_fusion", "models": ["ft2"]},
}

# bf16 checkpoints merged with mergekit's `dtype: bfloat16` (its compute dtype): compared by a
# statistic, not element by element (tests/cli/mergekit_golden.sh says which and why).
MK_BF16_CASES = {
    "ties_bf16": {"merge_method": "ties", "weights": [1.0, 0.7, 0.4], "density": 0.3,
                  "dtype": "float32", "out_dtype": "bfloat16"},
    "ties_bf16_compute": {"merge_method": "ties", "weights": [1.0, 0.7, 0.4], "density": 0.3,
                          "dtype": "bfloat16"},
    "task_arithmetic_bf16": {"merge_method": "task_arithmetic", "weights": [1.0, 0.5, -0.3],
                             "dtype": "bfloat16"},
}

# Per-tensor parameters (gradients over the layers, filters on the tensor name), on a five-layer
# set in deep/ so that gradients fall between their values. `model_params` are each model's.
MK_DEEP_CASES = {
    "ties_gradient": {
        "merge_method": "ties",
        "model_params": {"ft0": {"weight": [1.0, 0.2]}, "ft1": {"weight": 0.7, "density": 0.6},
                         "ft2": {"weight": [0.1, 0.5, 0.9]}},
        "parameters": {"density": [{"filter": "mlp", "value": 0.3}, {"value": [0.8, 0.4]}],
                       "lambda": [1.0, 0.7]}},
    "slerp_filters": {
        "merge_method": "slerp", "models": ["ft0"],
        "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                             {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                             {"value": 0.5}]}},
    "passthrough_stack": {
        "merge_method": "passthrough",
        "slices": [{"sources": [{"model": "ft0", "layer_range": [0, 3]}]},
                   {"sources": [{"model": "ft1", "layer_range": [2, 5],
                                 "parameters": {"scale": [{"filter": "o_proj", "value": 0.5},
                                                          {"value": 1.0}]}}]}]},
    "slerp_slices": {
        "merge_method": "slerp", "base_model": "ft0",
        "slices": [{"sources": [{"model": "ft0", "layer_range": [0, 5]},
                                {"model": "ft2", "layer_range": [0, 5]}]}],
        "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                             {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                             {"value": 0.5}]}},
    "ties_slices": {
        "merge_method": "ties", "base_model": "base",
        "slices": [{"sources": [{"model": "base", "layer_range": [0, 3]},
                                {"model": "ft0", "layer_range": [0, 3], "parameters": {"weight": 1.0}},
                                {"model": "ft1", "layer_range": [1, 4], "parameters": {"weight": [0.2, 0.9]}}]},
                   {"sources": [{"model": "base", "layer_range": [3, 5]},
                                {"model": "ft1", "layer_range": [3, 5], "parameters": {"weight": 0.5}},
                                {"model": "ft2", "layer_range": [3, 5], "parameters": {"weight": 0.8}}],
                    "parameters": {"density": 0.4}}],
        "parameters": {"density": 0.7}},
    "della_gradient": {
        "merge_method": "della", "seed": 4,
        "model_params": {"ft0": {"weight": 1.0, "epsilon": [0.05, 0.2]},
                         "ft1": {"weight": 0.5, "epsilon": 0.1}, "ft2": {"weight": 0.8}},
        "parameters": {"density": 0.5}},
}

# mergekit's MODEL+LORA references: a model with a PEFT adapter merged into it first. The
# adapters (lora/a on the base, lora/b on the bf16 base) are made below; each case is a whole
# config, its paths relative to the golden folder.
MK_LORA_CASES = {
    "ties_lora": {
        "merge_method": "ties", "base_model": "base",
        "models": [{"model": "ft0+lora/a", "parameters": {"weight": 1.0, "density": 0.6}},
                   {"model": "ft1", "parameters": {"weight": 0.7, "density": 0.6}}],
        "parameters": {"normalize": True}, "dtype": "float32"},
    "slerp_lora_base": {
        "merge_method": "slerp", "base_model": "base+lora/a",
        "models": [{"model": "base+lora/a"}, {"model": "ft2"}],
        "parameters": {"t": 0.4}, "dtype": "float32"},
    "task_arithmetic_lora_bf16": {
        "merge_method": "task_arithmetic", "base_model": "bf16/base",
        "models": [{"model": "bf16/base+lora/b", "parameters": {"weight": 1.0}},
                   {"model": "bf16/ft1", "parameters": {"weight": 0.5}}],
        "dtype": "float32", "out_dtype": "bfloat16"},
}
