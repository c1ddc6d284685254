// Command lines CLI11 refuses, told as revmerge tells every error (`revmerge: error: …`, exit 2):
// what was wrong, and for a mistyped command or option the nearest real one.
#include <algorithm>
#include <string>
#include <vector>

#include "commands.hpp"

namespace revmerge::cli {
namespace {

// Edit distance (insertions, deletions, substitutions, adjacent swaps).
std::size_t distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i)
    for (std::size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1,
                          d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

// The candidate nearest to `word`, if it is near enough to be a slip of the keyboard.
std::string nearest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  std::size_t best_d = std::max<std::size_t>(2, word.size() / 3) + 1;
  for (const auto& c : candidates)
    if (const auto dist = distance(word, c); dist < best_d) best_d = dist, best = c;
  return best;
}

std::vector<std::string> command_names(const CLI::App& app) {
  std::vector<std::string> names;
  for (const auto* sub : app.get_subcommands({})) names.push_back(sub->get_name());
  return names;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

}  // namespace

std::string parse_error_message(const CLI::App& app, const CLI::ParseError& e, int argc,
                                char** argv) {
  const auto commands = command_names(app);
  const std::string first = argc > 1 ? argv[1] : "";
  const auto is_command = std::find(commands.begin(), commands.end(), first) != commands.end();
  if (!is_command && first.size() > 1 && first[0] == '-')
    return "unknown option '" + first + "' (revmerge takes --help or --version, or a command: " +
           join(commands) + ")";
  if (!is_command) {
    if (first.empty()) return "no command given (commands: " + join(commands) + "; revmerge --help)";
    const auto guess = nearest(first, commands);
    return "unknown command '" + first + "'" +
           (guess.empty() ? "" : " (did you mean '" + guess + "'?)") + "; commands: " + join(commands);
  }
  std::string message = e.what();
  // CLI11's wording for the two slips users make most, in revmerge's.
  if (dynamic_cast<const CLI::ConversionError*>(&e)) {
    const auto colon = message.find(": "), eq = message.rfind(" = ");
    if (colon != std::string::npos && eq != std::string::npos && eq > colon)
      message = message.substr(colon + 2, eq - colon - 2) + ": '" + message.substr(eq + 3) +
                "' is not a valid value";
  } else if (dynamic_cast<const CLI::ArgumentMismatch*>(&e) &&
             message.find("At Most 1 required") != std::string::npos) {
    message = message.substr(0, message.find(": ")) + ": given more than once";
  }
  // An option this command does not have: name the nearest one it has.
  const CLI::App* sub = app.get_subcommand(first);
  std::vector<std::string> options;
  for (const auto* opt : sub->get_options()) {
    for (const auto& l : opt->get_lnames()) options.push_back("--" + l);
    for (const auto& s : opt->get_snames()) options.push_back("-" + s);
  }
  for (int i = 2; i < argc; ++i) {
    std::string word = argv[i];
    if (word.size() < 2 || word[0] != '-' || word == "--") continue;
    word = word.substr(0, word.find('='));
    if (std::find(options.begin(), options.end(), word) != options.end()) continue;
    const auto guess = nearest(word, options);
    return first + ": unknown option '" + word + "'" +
           (guess.empty() ? "" : " (did you mean '" + guess + "'?)") + "; revmerge " + first + " --help lists them";
  }
  return first + ": " + message;
}

}  // namespace revmerge::cli
