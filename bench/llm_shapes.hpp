#pragma once
// The linear modules of real decoder shapes (Llama family): per layer, each module's
// out × in as nn.Linear stores it.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace revmerge::bench {

struct ModuleShape {
  std::string name;
  std::int64_t out, in;
};

struct ModelShape {
  std::string name;
  std::int64_t hidden, intermediate, layers, heads, kv_heads;

  std::vector<ModuleShape> modules() const {
    const std::int64_t kv = hidden / heads * kv_heads;
    return {{"self_attn.q_proj", hidden, hidden},   {"self_attn.k_proj", kv, hidden},
            {"self_attn.v_proj", kv, hidden},       {"self_attn.o_proj", hidden, hidden},
            {"mlp.gate_proj", intermediate, hidden}, {"mlp.up_proj", intermediate, hidden},
            {"mlp.down_proj", hidden, intermediate}};
  }
};

inline ModelShape model_shape(const std::string& name) {
  if (name == "llama-7b") return {name, 4096, 11008, 32, 32, 32};
  if (name == "llama-13b") return {name, 5120, 13824, 40, 40, 40};
  if (name == "llama-70b") return {name, 8192, 28672, 80, 64, 8};
  if (name == "tiny") return {name, 64, 128, 2, 4, 2};
  throw std::invalid_argument("unknown model shape '" + name +
                              "' (llama-7b, llama-13b, llama-70b, tiny)");
}

}  // namespace revmerge::bench
