// A merge config's text as YAML documents, and the limits of what a merge config can hold.
#include "merge_config_yaml.hpp"

#include <yaml-cpp/depthguard.h>

#include <cctype>
#include <cstdint>
#include <sstream>

#include "revmerge/error.hpp"

namespace revmerge::cli {
namespace {

constexpr int kMaxConfigDepth = 10;
constexpr std::size_t kMaxConfigNodes = 200000;

}  // namespace

void check_shape(const YAML::Node& node, int depth, std::size_t& nodes, const std::string& file) {
  if (depth > kMaxConfigDepth)
    throw format_error(file + ": nested more than " + std::to_string(kMaxConfigDepth) +
                       " levels deep; a merge config needs at most 9 (slices, a slice, its "
                       "sources, a source, its parameters, a parameter's filters, a filter, its "
                       "value, a gradient's numbers)");
  if (++nodes > kMaxConfigNodes)
    throw format_error(file + ": holds more than " + std::to_string(kMaxConfigNodes) +
                       " values (counting each use of an alias); not a merge config");
  if (node.IsSequence()) {
    for (const auto& v : node) check_shape(v, depth + 1, nodes, file);
  } else if (node.IsMap()) {
    for (const auto& kv : node) {
      check_shape(kv.first, depth + 1, nodes, file);
      check_shape(kv.second, depth + 1, nodes, file);
    }
  }
}

// Every document of a config's text: YAML::Load would keep the first of a multi-document file (a
// mergekit-mega config) and quietly drop the rest. The text is split at its '---' lines (a
// document marker wherever it starts a line) and each piece loaded on its own: YAML::LoadAll
// (yaml-cpp 0.7) can loop forever on malformed text after a flow document, which the fuzz run
// found in a 264-byte input.
std::vector<Document> load_documents(const std::string& text, const std::string& file) {
  if (text.size() > kMaxConfigBytes)
    throw format_error(file + ": " + std::to_string(text.size()) +
                       " bytes; a merge config is at most " + std::to_string(kMaxConfigBytes) + " bytes");
  std::vector<std::string> pieces(1);
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("---") && (line.size() == 3 || std::isspace(static_cast<unsigned char>(line[3])))) {
      pieces.emplace_back(line.size() > 4 ? line.substr(4) + "\n" : std::string());
      continue;
    }
    pieces.back() += line + "\n";
  }
  const auto load = [&](const std::string& piece) {
    try {
      return YAML::Load(piece);
    } catch (const YAML::DeepRecursion& e) {
      throw format_error(file + ": nested more than 2000 levels deep (line " +
                         std::to_string(e.mark.line + 1) +
                         "); a merge config needs 4 (tasks, a task, its parameters, a value)");
    } catch (const YAML::Exception& e) {
      throw format_error(file + ": not valid YAML/JSON: " + e.what());
    }
  };
  if (pieces.size() == 1) return {{load(text), text}};
  std::vector<Document> documents;
  for (const auto& piece : pieces)
    if (auto root = load(piece); root.IsDefined() && !root.IsNull())  // not blank or comments only
      documents.push_back({std::move(root), piece});
  if (documents.size() > 1) return documents;
  return {{documents.empty() ? YAML::Node() : documents.front().root, text}};  // one: its text is the file's
}

}  // namespace revmerge::cli
