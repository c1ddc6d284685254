#include "distributed/agreement.hpp"

#include <exception>
#include <string>

#include "revmerge/error.hpp"

namespace revmerge {
namespace {

// An error as one line of its class's name, then its message ("" for success).
std::string encode(const std::exception_ptr& e) {
  if (!e) return {};
  try {
    std::rethrow_exception(e);
  } catch (const interrupted& x) {
    return std::string("interrupted\n") + x.what();
  } catch (const usage_error& x) {
    return std::string("usage\n") + x.what();
  } catch (const io_error& x) {
    return std::string("io\n") + x.what();
  } catch (const format_error& x) {
    return std::string("format\n") + x.what();
  } catch (const shape_error& x) {
    return std::string("shape\n") + x.what();
  } catch (const unsupported_error& x) {
    return std::string("unsupported\n") + x.what();
  } catch (const device_error& x) {
    return std::string("device\n") + x.what();
  } catch (const solver_error& x) {
    return std::string("solver\n") + x.what();
  } catch (const error& x) {
    return std::string("error\n") + x.what();
  } catch (const std::exception& x) {
    return std::string("internal\n") + x.what();
  } catch (...) {
    return "internal\nan unknown exception";
  }
}

[[noreturn]] void rethrow_encoded(const std::string& text, int rank) {
  const auto cut = text.find('\n');
  const std::string kind = text.substr(0, cut), what = text.substr(cut + 1);
  if (kind == "interrupted") throw interrupted(what);
  if (kind == "usage") throw usage_error(what);
  if (kind == "io") throw io_error(what);
  if (kind == "format") throw format_error(what);
  if (kind == "shape") throw shape_error(what);
  if (kind == "unsupported") throw unsupported_error(what);
  if (kind == "device") throw device_error(what);
  if (kind == "solver") throw solver_error(what);
  if (kind == "error") throw error(what);
  throw std::runtime_error("worker " + std::to_string(rank) + ": " + what);
}

}  // namespace

void agree_on(Peers* peers, const std::function<void()>& step) {
  if (!peers) return step();
  std::exception_ptr failed;
  try {
    step();
  } catch (...) {
    failed = std::current_exception();
  }
  const auto all = peers->all_gather(encode(failed));
  for (std::size_t r = 0; r < all.size(); ++r)
    if (!all[r].empty()) {
      if (static_cast<int>(r) == peers->rank()) std::rethrow_exception(failed);  // the original
      rethrow_encoded(all[r], static_cast<int>(r));
    }
}

std::pair<std::size_t, std::size_t> share_of(const std::vector<std::uint64_t>& bytes, int rank, int size) {
  long double total = 0;
  for (const auto b : bytes) total += static_cast<long double>(b);
  // Module i goes to the worker whose byte range holds the module's middle byte (by count where
  // there are no bytes): contiguous, in order, and no worker more than one module from its share.
  const auto owner = [&](std::size_t i, long double before) {
    const long double middle = total > 0 ? (before + static_cast<long double>(bytes[i]) / 2) / total
                                         : (static_cast<long double>(i) + 0.5L) / static_cast<long double>(bytes.size());
    const auto w = static_cast<int>(middle * size);
    return w < size ? w : size - 1;
  };
  std::size_t first = bytes.size(), last = bytes.size();
  long double before = 0;
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    const int w = owner(i, before);
    if (w == rank && first == bytes.size()) first = i;
    if (w > rank) {
      last = i;
      break;
    }
    before += static_cast<long double>(bytes[i]);
  }
  if (first == bytes.size()) first = last = (last == bytes.size() ? bytes.size() : last);
  return {first, last};
}

}  // namespace revmerge
