#pragma once
// A merge config's text as YAML documents, within the limits of what a merge config can hold:
// what merge_config.cpp reads its keys from.
#include <yaml-cpp/yaml.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace revmerge::cli {

// What a merge config can hold: a list of tasks with a few keys each. A file beyond these is
// not a merge config (or is made to exhaust the reader), and is refused before it is parsed
// (size) or before it is used (depth, node count: aliases can make a small file a huge tree).
inline constexpr std::uintmax_t kMaxConfigBytes = std::uintmax_t{1} << 20;

// One YAML document of a config: its tree and its own text (for its recipe).
struct Document {
  YAML::Node root;
  std::string text;
};

/// Every document of a config's text (several: a mergekit-mega config; a file of one document
/// keeps the whole text as its own). Throws format_error naming `file` for text past the size
/// limit, nested past yaml-cpp's guard, or not YAML.
std::vector<Document> load_documents(const std::string& text, const std::string& file);

/// Throws format_error naming `file` where `node` is nested deeper or holds more values (each
/// use of an alias counted) than any merge config; `nodes` counts the values seen so far.
void check_shape(const YAML::Node& node, int depth, std::size_t& nodes, const std::string& file);

}  // namespace revmerge::cli
