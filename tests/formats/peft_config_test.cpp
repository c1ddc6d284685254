#include <gtest/gtest.h>

#include <cmath>

#include "revmerge/error.hpp"
#include "revmerge/peft.hpp"

namespace revmerge {
namespace {

LoraConfig parse(const std::string& json) { return parse_lora_config(json, "adapter_config.json"); }

TEST(LoraConfig, ScalesFollowPeftRules) {
  const auto c = parse(R"({"peft_type":"LORA","r":8,"lora_alpha":16,"target_modules":["q_proj"]})");
  EXPECT_DOUBLE_EQ(c.scale_for("model.layers.0.self_attn.q_proj"), 2.0);
  const auto rs = parse(R"({"r":16,"lora_alpha":8,"use_rslora":true})");
  EXPECT_DOUBLE_EQ(rs.scale_for("x.q_proj"), 2.0);  // 8 / sqrt(16)
}

TEST(LoraConfig, PatternsMatchWholeComponentsFromTheEnd) {
  const auto c = parse(R"({"r":4,"lora_alpha":8,
    "rank_pattern":{"model.layers.1.self_attn.q_proj":2,"up_proj":6},
    "alpha_pattern":{"up_proj":3}})");
  EXPECT_EQ(c.rank_for("model.layers.1.self_attn.q_proj"), 2);
  EXPECT_EQ(c.rank_for("model.layers.0.self_attn.q_proj"), 4);
  EXPECT_EQ(c.rank_for("model.layers.11.self_attn.q_proj"), 4);
  EXPECT_EQ(c.rank_for("model.layers.0.mlp.up_proj"), 6);
  EXPECT_EQ(c.rank_for("model.layers.0.mlp.gate_up_proj"), 4);  // not a component match
  EXPECT_DOUBLE_EQ(c.scale_for("model.layers.0.mlp.up_proj"), 0.5);
  EXPECT_DOUBLE_EQ(c.scale_for("model.layers.1.self_attn.q_proj"), 4.0);
}

// Found by the fuzzer: a nested quantifier used to backtrack for minutes; RE2 matches in
// linear time.
TEST(LoraConfig, PathologicalPatternsMatchInPolynomialTime) {
  const auto c = parse(R"({"r":4,"rank_pattern":{"(a+)+b":2},"target_modules":"(x*)*y"})");
  const std::string path(40, 'a');
  EXPECT_EQ(c.rank_for(path + "c"), 4);
  EXPECT_EQ(c.rank_for(path + "b"), 2);
  EXPECT_FALSE(c.targets(std::string(40, 'x') + "z"));
}

// PEFT's get_pattern_key takes the first key in the file's order that matches, not the first
// in sorted order.
TEST(LoraConfig, TheFirstMatchingPatternInTheFilesOrderWins) {
  const auto c = parse(R"({"r":8,"lora_alpha":8,
    "rank_pattern":{"self_attn.q_proj":2,"q_proj":4,"layers.0.self_attn.q_proj":6},
    "alpha_pattern":{"q_proj":3,"self_attn.q_proj":5}})");
  EXPECT_EQ(c.rank_for("model.layers.0.self_attn.q_proj"), 2);
  EXPECT_EQ(c.rank_for("model.layers.0.cross.q_proj"), 4);
  EXPECT_DOUBLE_EQ(c.alpha_for("model.layers.0.self_attn.q_proj"), 3.0);
  EXPECT_DOUBLE_EQ(c.alpha_for("model.layers.0.mlp.up_proj"), 8.0);
}

// Patterns are compiled once, when the config is read: what RE2 cannot match (backreferences,
// lookaround) is refused there, naming the field, the entry and the construct; the long
// alternations some tools generate are fine.
TEST(LoraConfig, PatternsAreCompiledOnceAndRefusedWithTheReason) {
  const auto c = parse(R"({"rank_pattern":{"q_proj":2},"target_modules":".*q_proj"})");
  ASSERT_NE(c.patterns, nullptr);
  const std::pair<const char*, const char*> refused[] = {
      {R"({"target_modules":"^(?!.*vision).*q_proj"})", "target_modules entry '^(?!.*vision).*q_proj'"},
      {R"({"rank_pattern":{"(a)\\1":2}})", "rank_pattern entry '(a)\\1'"},
      {R"({"alpha_pattern":{"[q":2}})", "alpha_pattern entry '[q'"},
  };
  for (const auto& [json, fragment] : refused) {
    try {
      parse(json);
      ADD_FAILURE() << json;
    } catch (const format_error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("without backreferences or lookaround"), std::string::npos);
    }
  }
  std::string alternation = R"(.*\\.layers\\.(0)";
  for (int i = 1; i < 500; ++i) alternation += "|" + std::to_string(i);
  alternation += R"()\\.self_attn\\.q_proj)";
  const auto generated = parse(R"({"target_modules":")" + alternation + R"("})");
  EXPECT_TRUE(generated.targets("model.layers.417.self_attn.q_proj"));
  EXPECT_FALSE(generated.targets("model.layers.500.self_attn.q_proj"));
}

TEST(LoraConfig, TargetModulesAsListOrRegex) {
  const auto list = parse(R"({"target_modules":["q_proj","mlp.up_proj"]})");
  EXPECT_TRUE(list.targets("model.layers.0.self_attn.q_proj"));
  EXPECT_TRUE(list.targets("model.layers.0.mlp.up_proj"));
  EXPECT_FALSE(list.targets("model.layers.0.self_attn.k_proj"));
  EXPECT_FALSE(list.targets("model.layers.0.self_attn.xq_proj"));
  const auto re = parse(R"({"target_modules":".*\\.(q|v)_proj"})");
  EXPECT_TRUE(re.targets("model.layers.0.self_attn.v_proj"));
  EXPECT_FALSE(re.targets("model.layers.0.self_attn.k_proj"));
  EXPECT_TRUE(parse(R"({"target_modules":"all-linear"})").targets("anything"));
}

TEST(LoraConfig, RefusesWhatIsNotSupportedNamingTheOption) {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"peft_type":"IA3"})", "peft_type 'IA3'"},
      {R"({"use_dora":true})", "DoRA"},
      {R"({"lora_bias":true})", "lora_bias"},
      {R"({"bias":"all"})", "bias = 'all'"},
      {R"({"target_parameters":["experts.gate_up_proj"]})", "target_parameters"},
      {R"({"alora_invocation_tokens":[32, 7]})", "alora_invocation_tokens"},
      {R"({"layer_replication":[[0, 4], [2, 6]]})", "layer_replication"},
      {R"({"use_qalora":true})", "use_qalora"},
      {R"({"arrow_config":{"top_k":2}})", "arrow_config"},
      {R"({"kasa_config":{"beta":1}})", "kasa_config"},
      {R"({"monteclora_config":{"num_groups":4}})", "monteclora_config"},
      {R"({"use_bdlora":{"nblocks":2}})", "use_bdlora"},
      {R"({"init_lora_weights":"pissa"})", "init_lora_weights 'pissa' changes the base weights"},
      {R"({"init_lora_weights":"pissa_niter_16"})", "path_initial_model_for_weight_conversion"},
      {R"({"init_lora_weights":"corda"})", "'corda'"},
      {R"({"init_lora_weights":"OLoRA"})", "'OLoRA'"},
      {R"({"init_lora_weights":"lora_ga"})", "'lora_ga'"},
  };
  for (const auto& [json, fragment] : cases) {
    try {
      parse(json);
      ADD_FAILURE() << json;
    } catch (const unsupported_error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("adapter_config.json"), std::string::npos);
    }
  }
}

// The fields of those variants as PEFT writes them for a plain adapter (null, false, empty), and
// VeLoRA's, are plain LoRA.
TEST(LoraConfig, PlainValuesOfTheVariantsFieldsAndInitialisationsAreAccepted) {
  EXPECT_NO_THROW(parse(R"({"alora_invocation_tokens":null,"layer_replication":null,"use_qalora":false,)"
                        R"("qalora_group_size":16,"arrow_config":null,"kasa_config":null,"monteclora_config":null,)"
                        R"("use_bdlora":null,"velora_config":{"rank":4}})"));
  EXPECT_NO_THROW(parse(R"({"layer_replication":[],"use_bdlora":false})"));
  // Initialisations that leave the base as it is (a converted PiSSA adapter says true).
  for (const auto* init : {"true", "false", R"("gaussian")", R"("eva")", R"("orthogonal")", R"("mica")", R"("loftq")"})
    EXPECT_NO_THROW(parse(std::string(R"({"init_lora_weights":)") + init + "}")) << init;
}

TEST(LoraConfig, RejectsMalformedFields) {
  EXPECT_THROW(parse(R"({"r":"eight"})"), format_error);
  EXPECT_THROW(parse(R"({"r":0})"), format_error);
  EXPECT_THROW(parse(R"({"r":4.5})"), format_error);        // not an integer
  EXPECT_THROW(parse(R"({"r":1e69})"), format_error);       // found by the fuzzer: was UB
  EXPECT_THROW(parse(R"({"r":4294967300})"), format_error);  // out of range, not wrapped
  EXPECT_THROW(parse(R"({"rank_pattern":{"q":2.5}})"), format_error);
  // Found by the fuzzer as undefined behaviour in libstdc++'s regex compiler: RE2 reads an
  // oversized count as literal text and an escape of digits as an octal code, without UB.
  EXPECT_FALSE(parse(R"({"target_modules":"a{99999999999999999999}"})").targets("a"));
  EXPECT_FALSE(parse(R"({"target_modules":"(a)\\1111111111111111111111"})").targets("aa"));
  EXPECT_NO_THROW(parse(R"({"target_modules":"a{2,1000}|layers[.]10000[.]q"})"));
  EXPECT_THROW(parse(R"({"rank_pattern":{"(":2}})"), format_error);
  EXPECT_THROW(parse(R"({"target_modules":")" + std::string(70000, 'a') + R"("})"), format_error);
  EXPECT_THROW(parse(R"({"r":4,"r":8})"), format_error);  // duplicate key
  EXPECT_THROW(parse("[1]"), format_error);
  EXPECT_THROW(parse("{"), format_error);
}

}  // namespace
}  // namespace revmerge
