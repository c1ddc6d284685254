#include "distributed/shared_output.hpp"

#include "distributed/agreement.hpp"

namespace revmerge {
namespace {

// Lines joined by newlines (paths and tensor names hold none), and back.
std::string join_lines(const std::vector<std::string>& lines) {
  std::string text;
  for (const auto& l : lines) text += l + '\n';
  return text;
}

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> out;
  std::size_t at = 0;
  for (auto nl = text.find('\n'); nl != std::string::npos; at = nl + 1, nl = text.find('\n', at))
    out.push_back(text.substr(at, nl - at));
  return out;
}

}  // namespace

void SharedOutput::open(const std::function<void()>& prepare, const std::function<std::vector<std::string>()>& create,
                        const std::function<void(const std::vector<std::string>&)>& join) {
  std::vector<std::string> files;
  agree_on(peers_, [&] {
    if (prepare) prepare();
    if (first()) files = create();
  });
  if (!peers_) return;
  const auto where = split_lines(peers_->all_gather(first() ? join_lines(files) : std::string())[0]);
  agree_on(peers_, [&] {
    if (!first()) join(where);
  });
}

std::vector<std::string> SharedOutput::write_share(const std::function<void()>& write, const std::function<void()>& sync,
                                                   const std::function<std::vector<std::string>()>& written) {
  agree_on(peers_, [&] {
    write();
    if (!first()) sync();
  });
  if (!peers_) return {};
  const auto names = peers_->all_gather(first() ? std::string() : join_lines(written()));
  std::vector<std::string> others;
  if (first())
    for (std::size_t r = 1; r < names.size(); ++r)
      for (auto& n : split_lines(names[r])) others.push_back(std::move(n));
  return others;
}

std::vector<std::string> SharedOutput::gather(const std::string& mine) {
  if (!peers_) return {mine};
  return peers_->all_gather(mine);
}

void SharedOutput::commit(const std::function<void()>& commit) {
  agree_on(peers_, [&] {
    if (first()) commit();
  });
}

}  // namespace revmerge
