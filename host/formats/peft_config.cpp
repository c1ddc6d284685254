// adapter_config.json: the LoRA fields revmerge reads, the ones it refuses, and PEFT's rules
// for matching rank_pattern / alpha_pattern / target_modules against module paths.
#include <re2/re2.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <utility>

#include "core/json_file.hpp"
#include "revmerge/error.hpp"
#include "revmerge/peft.hpp"

namespace revmerge {

// The patterns of one config, compiled once (RE2: linear-time matching, no recursion, memory
// bounded, so a hostile pattern costs nothing; the syntax is Python's `re` less backreferences
// and lookaround, which RE2 refuses at parse time).
struct LoraPatterns {
  struct Keyed {
    std::string key;
    std::unique_ptr<RE2> re;
  };
  std::unique_ptr<RE2> target;     // PEFT: re.fullmatch(target_modules, path)
  std::vector<Keyed> rank, alpha;  // PEFT: re.match(rf"(.*\.)?({key})$", path), first key wins
};

namespace {

using nlohmann::json;

// Real patterns are a few dozen characters; generated alternations of module names reach a few
// thousand. RE2 bounds the memory of any pattern; this bounds what a message quotes.
constexpr std::size_t kMaxPatternLength = 1 << 16;

RE2::Options pattern_options() {
  RE2::Options o;
  o.set_log_errors(false);
  return o;
}

std::unique_ptr<RE2> compile(const std::string& regex, const std::string& shown,
                             const std::string& file, const char* field) {
  if (shown.size() > kMaxPatternLength)
    throw format_error(file + ": " + field + " entry of " + std::to_string(shown.size()) +
                       " characters is longer than the " + std::to_string(kMaxPatternLength) +
                       " allowed");
  auto re = std::make_unique<RE2>(regex, pattern_options());
  if (!re->ok())
    throw format_error(file + ": " + field + " entry '" + shown.substr(0, 120) +
                       "' is not a pattern revmerge can match: " + re->error() +
                       " (module patterns are Python regular expressions without backreferences "
                       "or lookaround)");
  return re;
}

// PEFT's get_pattern_key: `re.match(rf"(.*\.)?({key})$", path)`.
std::unique_ptr<RE2> compile_key(const std::string& key, const std::string& file, const char* field) {
  return compile("(.*\\.)?(" + key + ")", key, file, field);
}

template <class T>
T get_field(const json& j, const char* key, T fallback, const std::string& file) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  return json_as<T>(*it, file + ": field '" + key + "'");
}

// The keys of an object field in the file's order (PEFT takes the first key that matches; the
// parsed json's objects are sorted).
template <class Map>
std::vector<std::string> map_keys(const Map& m) {
  std::vector<std::string> keys;
  for (const auto& [k, _] : m) keys.push_back(k);
  return keys;
}

template <class Map>
std::vector<std::string> keys_in_file_order(const nlohmann::ordered_json& ordered, const char* field,
                                            const Map& parsed) {
  if (parsed.empty()) return {};
  std::vector<std::string> keys;
  if (ordered.is_object())
    if (const auto it = ordered.find(field); it != ordered.end() && it->is_object())
      for (const auto& [key, _] : it->items()) keys.push_back(key);
  auto sorted = keys;
  std::sort(sorted.begin(), sorted.end());
  sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
  return sorted == map_keys(parsed) ? keys : map_keys(parsed);  // the same keys, or no order
}

std::shared_ptr<const LoraPatterns> compile_patterns(const LoraConfig& c,
                                                     const std::vector<std::string>& rank_order,
                                                     const std::vector<std::string>& alpha_order,
                                                     const std::string& file) {
  auto p = std::make_shared<LoraPatterns>();
  if (c.target_regex && *c.target_regex != "all-linear")
    p->target = compile(*c.target_regex, *c.target_regex, file, "target_modules");
  for (const auto& key : rank_order) p->rank.push_back({key, compile_key(key, file, "rank_pattern")});
  for (const auto& key : alpha_order) p->alpha.push_back({key, compile_key(key, file, "alpha_pattern")});
  return p;
}

// The config's compiled patterns; a config built by hand (not parsed) compiles them here, its
// keys in the map's order.
std::shared_ptr<const LoraPatterns> patterns_of(const LoraConfig& c) {
  if (c.patterns) return c.patterns;
  return compile_patterns(c, map_keys(c.rank_pattern), map_keys(c.alpha_pattern), "LoraConfig");
}

// The first key whose pattern matches `path` as PEFT matches it, or nullptr.
const std::string* first_match(const std::vector<LoraPatterns::Keyed>& keyed, const std::string& path) {
  for (const auto& k : keyed)
    if (k.key == path || RE2::FullMatch(path, *k.re)) return &k.key;
  return nullptr;
}

}  // namespace

int LoraConfig::rank_for(const std::string& path) const {
  if (rank_pattern.empty()) return r;
  const auto* key = first_match(patterns_of(*this)->rank, path);
  return key ? rank_pattern.at(*key) : r;
}

double LoraConfig::alpha_for(const std::string& path) const {
  if (alpha_pattern.empty()) return lora_alpha;
  const auto* key = first_match(patterns_of(*this)->alpha, path);
  return key ? alpha_pattern.at(*key) : lora_alpha;
}

double LoraConfig::scale_for(const std::string& path) const {
  const double rank = rank_for(path);
  return use_rslora ? alpha_for(path) / std::sqrt(rank) : alpha_for(path) / rank;
}

bool LoraConfig::targets(const std::string& path) const {
  if (target_regex) {
    if (*target_regex == "all-linear") return true;
    return RE2::FullMatch(path, *patterns_of(*this)->target);
  }
  if (target_modules.empty()) return true;  // PEFT's per-architecture defaults were used
  for (const auto& t : target_modules)
    if (path == t || path.ends_with("." + t)) return true;
  return false;
}

LoraConfig parse_lora_config(const std::string& json_text, const std::string& file) {
  const json j = parse_json_text(json_text, file);
  if (!j.is_object()) throw format_error(file + ": not a JSON object");

  const auto type = get_field<std::string>(j, "peft_type", "LORA", file);
  if (type != "LORA")
    throw unsupported_error(file + ": peft_type '" + type + "' is not supported (only LORA)");
  if (get_field<bool>(j, "use_dora", false, file))
    throw unsupported_error(file + ": DoRA adapters (use_dora) are not supported");
  if (get_field<bool>(j, "lora_bias", false, file))
    throw unsupported_error(file + ": LoRA bias (lora_bias) is not supported");
  if (const auto bias = get_field<std::string>(j, "bias", "none", file); bias != "none")
    throw unsupported_error(file + ": bias = '" + bias + "' is not supported (only 'none')");
  if (const auto it = j.find("target_parameters"); it != j.end() && !it->is_null() &&
                                                    !(it->is_array() && it->empty()))
    throw unsupported_error(file + ": target_parameters (LoRA on raw parameters) is not supported");
  if (const auto it = j.find("trainable_token_indices"); it != j.end() && !it->is_null())
    throw unsupported_error(file + ": trainable_token_indices is not supported");
  // PiSSA, CorDA, OLoRA and LoRA-GA move the base weights at initialisation (W − B₀A₀): the
  // factors PEFT saves unconverted apply to that changed base, not to the base model.
  if (const auto it = j.find("init_lora_weights"); it != j.end() && it->is_string()) {
    const auto init = it->get<std::string>();
    std::string lower = init;
    for (auto& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (lower.starts_with("pissa") || lower.starts_with("corda") || lower == "olora" || lower == "lora_ga")
      throw unsupported_error(file + ": init_lora_weights '" + init + "' changes the base weights at initialisation, so "
                              "these factors apply to that changed base, not to the base model; save the adapter "
                              "converted to plain LoRA (PEFT: save_pretrained(..., "
                              "path_initial_model_for_weight_conversion=...)) and merge that");
  }
  // PEFT's LoRA variants whose forward is not W x + s·B A x on the base model's own layers: a
  // merge or a revert writes plain LoRA, which would silently act otherwise (everywhere rather
  // than after the invocation tokens, on layers the base does not have, without the router).
  // VeLoRA (a backward pass of its own) and MiCA (a frozen B) are plain LoRA at inference.
  const std::pair<const char*, const char*> variants[] = {
      {"alora_invocation_tokens", "activated LoRA (alora_invocation_tokens: the adapter acts only from its invocation "
                                  "tokens on)"},
      {"layer_replication", "layer replication (layer_replication: the layers are numbered in the expanded model)"},
      {"use_qalora", "QALoRA (use_qalora: A acts on inputs pooled in groups)"},
      {"arrow_config", "Arrow routing (arrow_config)"},
      {"kasa_config", "KaSA (kasa_config: a learned diagonal between A and B)"},
      {"monteclora_config", "MonteCLoRA (monteclora_config)"},
      {"use_bdlora", "block-diagonal LoRA (use_bdlora: factors stored as blocks)"},
  };
  for (const auto& [key, what] : variants)
    if (const auto it = j.find(key); it != j.end() && !it->is_null() && *it != false &&
                                     !((it->is_array() || it->is_object()) && it->empty()))
      throw unsupported_error(file + ": " + what + " is not supported: what revmerge writes is plain LoRA");

  LoraConfig c;
  c.r = get_field<int>(j, "r", 8, file);
  if (c.r <= 0) throw format_error(file + ": r must be positive, got " + std::to_string(c.r));
  c.lora_alpha = get_field<double>(j, "lora_alpha", 8.0, file);
  c.use_rslora = get_field<bool>(j, "use_rslora", false, file);
  c.fan_in_fan_out = get_field<bool>(j, "fan_in_fan_out", false, file);
  c.base_model_name_or_path = get_field<std::string>(j, "base_model_name_or_path", "", file);
  c.task_type = get_field<std::string>(j, "task_type", "", file);
  c.modules_to_save = get_field<std::vector<std::string>>(j, "modules_to_save", {}, file);

  if (const auto it = j.find("target_modules"); it != j.end() && !it->is_null()) {
    if (it->is_string()) {
      c.target_regex = it->get<std::string>();
    } else {
      c.target_modules = get_field<std::vector<std::string>>(j, "target_modules", {}, file);
    }
  }
  c.rank_pattern = get_field<std::map<std::string, int>>(j, "rank_pattern", {}, file);
  c.alpha_pattern = get_field<std::map<std::string, double>>(j, "alpha_pattern", {}, file);
  for (const auto& [key, r] : c.rank_pattern)
    if (r <= 0) throw format_error(file + ": rank_pattern['" + key + "'] must be positive");
  // The text again, keeping its key order, only where there are pattern keys to order.
  const auto ordered = c.rank_pattern.empty() && c.alpha_pattern.empty()
                           ? nlohmann::ordered_json()
                           : nlohmann::ordered_json::parse(json_text, nullptr, false);
  c.patterns = compile_patterns(c, keys_in_file_order(ordered, "rank_pattern", c.rank_pattern),
                                keys_in_file_order(ordered, "alpha_pattern", c.alpha_pattern), file);
  return c;
}

}  // namespace revmerge
