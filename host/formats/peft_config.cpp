// adapter_config.json: the LoRA fields revmerge reads, the ones it refuses, and PEFT's rules
// for matching rank_pattern / alpha_pattern / target_modules against module paths.
#include <cmath>
#include <regex>

#include "core/json_file.hpp"
#include "revmerge/error.hpp"
#include "revmerge/peft.hpp"

namespace revmerge {
namespace {

using nlohmann::json;

// Patterns come from untrusted files: match them with libstdc++'s polynomial-time (BFS)
// executor, so a pathological pattern such as (a*)*b cannot backtrack exponentially.
#ifdef __GLIBCXX__
constexpr auto kSyntax = std::regex::ECMAScript | std::regex_constants::__polynomial;
#else
constexpr auto kSyntax = std::regex::ECMAScript;
#endif

bool regex_full_match(const std::string& text, const std::string& pattern) {
  try {
    return std::regex_match(text, std::regex(pattern, kSyntax));
  } catch (const std::regex_error&) {
    return false;  // parse_lora_config has already rejected invalid patterns
  }
}

// PEFT's get_pattern_key: `re.match(rf"(.*\.)?({key})$", path)`.
bool pattern_matches(const std::string& key, const std::string& path) {
  if (key == path) return true;
  try {
    return std::regex_match(path, std::regex("(.*\\.)?(" + key + ")", kSyntax));
  } catch (const std::regex_error&) {
    return false;  // PEFT would raise; parse_lora_config has already rejected such keys
  }
}

template <class T>
T get_field(const json& j, const char* key, T fallback, const std::string& file) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  return json_as<T>(*it, file + ": field '" + key + "'");
}

// libstdc++'s regex engine recurses per pattern element: a bounded length keeps a hostile
// config from exhausting the stack. Real patterns are a few dozen characters.
constexpr std::size_t kMaxPatternLength = 512;

void check_regex(const std::string& pattern, const std::string& file, const char* field) {
  if (pattern.size() > kMaxPatternLength)
    throw format_error(file + ": " + field + " entry of " + std::to_string(pattern.size()) +
                       " characters is longer than the " + std::to_string(kMaxPatternLength) +
                       " allowed");
  // libstdc++ parses repeat counts and backreference numbers into a long without an overflow
  // check (undefined behaviour for "{99999999999999999999}" or "\\99999999999999999999"), and
  // large counts multiply the automaton. Backreferences have no use in module patterns (and the
  // polynomial matcher refuses them): refuse them, and counts above 1000, before compiling.
  for (std::size_t i = 0; i + 1 < pattern.size(); ++i)
    if (pattern[i] == '\\') {
      if (pattern[i + 1] >= '1' && pattern[i + 1] <= '9')
        throw format_error(file + ": " + field + " entry '" + pattern.substr(0, 80) +
                           "' uses a backreference, which module patterns do not support");
      ++i;  // skip the escaped character
    }
  for (std::size_t i = pattern.find('{'); i != std::string::npos; i = pattern.find('{', i + 1)) {
    std::size_t digits = 0;
    for (std::size_t j = i + 1; j < pattern.size() && pattern[j] != '}'; ++j) {
      digits = (pattern[j] >= '0' && pattern[j] <= '9') ? digits + 1 : 0;
      if (digits > 3 && std::stoul(pattern.substr(j - 3, 4)) > 1000)
        throw format_error(file + ": " + field + " entry '" + pattern.substr(0, 80) +
                           "' has a repeat count above 1000");
    }
  }
  try {
    std::regex re(pattern, kSyntax);
  } catch (const std::regex_error& e) {
    throw format_error(file + ": " + field + " entry '" + pattern + "' is not a valid regex");
  }
}

}  // namespace

int LoraConfig::rank_for(const std::string& path) const {
  for (const auto& [key, r_] : rank_pattern)
    if (pattern_matches(key, path)) return r_;
  return r;
}

double LoraConfig::alpha_for(const std::string& path) const {
  for (const auto& [key, a] : alpha_pattern)
    if (pattern_matches(key, path)) return a;
  return lora_alpha;
}

double LoraConfig::scale_for(const std::string& path) const {
  const double rank = rank_for(path);
  return use_rslora ? alpha_for(path) / std::sqrt(rank) : alpha_for(path) / rank;
}

bool LoraConfig::targets(const std::string& path) const {
  if (target_regex) {
    if (*target_regex == "all-linear") return true;
    return regex_full_match(path, *target_regex);
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
      if (*c.target_regex != "all-linear") check_regex(*c.target_regex, file, "target_modules");
    } else {
      c.target_modules = get_field<std::vector<std::string>>(j, "target_modules", {}, file);
    }
  }
  c.rank_pattern = get_field<std::map<std::string, int>>(j, "rank_pattern", {}, file);
  c.alpha_pattern = get_field<std::map<std::string, double>>(j, "alpha_pattern", {}, file);
  for (const auto& [key, r] : c.rank_pattern) {
    check_regex(key, file, "rank_pattern");
    if (r <= 0) throw format_error(file + ": rank_pattern['" + key + "'] must be positive");
  }
  for (const auto& [key, _] : c.alpha_pattern) check_regex(key, file, "alpha_pattern");
  return c;
}

}  // namespace revmerge
