#include "core/mapping_guard.hpp"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "revmerge/error.hpp"

namespace fs = std::filesystem;

namespace revmerge {
namespace {

// The handler may only touch lock-free atomics: slots are claimed with `used`, and `begin` is
// published last (released) so a handler that sees a range also sees its size.
struct Slot {
  std::atomic<bool> used{false};
  std::atomic<std::uintptr_t> begin{0};
  std::atomic<std::size_t> size{0};
  std::atomic<bool> faulted{false};
};
constexpr int kSlots = 1 << 14;  // mappings alive at once: shards × models, with room
Slot g_slots[kSlots];
std::atomic<int> g_high_water{0};  // slots at or above are unused: the handler's scan stops here
struct sigaction g_previous {};

// Paths for messages, kept outside the handler's reach.
std::mutex g_paths_mutex;
std::map<int, fs::path> g_paths;

void pass_on(int sig, siginfo_t* info, void* context) {
  if ((g_previous.sa_flags & SA_SIGINFO) != 0 && g_previous.sa_sigaction != nullptr) {
    g_previous.sa_sigaction(sig, info, context);
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
    g_previous.sa_handler(sig);
  } else {
    // The default action, as if no handler were installed: the signal is blocked in here and
    // delivered again on return (a faulting access would also fault again).
    ::signal(SIGBUS, SIG_DFL);
    ::raise(SIGBUS);
  }
}

void on_sigbus(int sig, siginfo_t* info, void* context) {
  // Only a fault the kernel raised has an address (a sent signal's si_code is <= 0).
  const auto addr = info->si_code > 0 ? reinterpret_cast<std::uintptr_t>(info->si_addr) : 0;
  const int high = addr == 0 ? 0 : g_high_water.load(std::memory_order_acquire);
  for (int i = 0; i < high; ++i) {
    Slot& s = g_slots[i];
    const std::uintptr_t begin = s.begin.load(std::memory_order_acquire);
    if (begin == 0 || addr < begin || addr - begin >= s.size.load(std::memory_order_relaxed)) continue;
    // Zero pages from the faulting page to the range's end: the read and the ones after it
    // complete (reading zeros), and the owner learns from `faulted`.
    const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    const std::uintptr_t from = addr / page * page;
    const std::uintptr_t end = (begin + s.size.load(std::memory_order_relaxed) + page - 1) / page * page;
    void* p = ::mmap(reinterpret_cast<void*>(from), end - from, PROT_READ,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) break;
    s.faulted.store(true, std::memory_order_release);
    return;
  }
  pass_on(sig, info, context);
}

void install_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, &g_previous);
  });
}

}  // namespace

int guard_mapping(const void* data, std::size_t size, const fs::path& path) {
  install_handler();
  for (int i = 0; i < kSlots; ++i) {
    bool expected = false;
    if (!g_slots[i].used.compare_exchange_strong(expected, true, std::memory_order_acq_rel)) continue;
    g_slots[i].faulted.store(false, std::memory_order_release);
    {
      std::lock_guard lock(g_paths_mutex);
      g_paths[i] = path;
    }
    g_slots[i].size.store(size, std::memory_order_relaxed);
    g_slots[i].begin.store(reinterpret_cast<std::uintptr_t>(data), std::memory_order_release);
    int high = g_high_water.load(std::memory_order_relaxed);
    while (high < i + 1 && !g_high_water.compare_exchange_weak(high, i + 1, std::memory_order_acq_rel)) {
    }
    return i;
  }
  return -1;
}

void unguard_mapping(int slot) noexcept {
  if (slot < 0) return;
  g_slots[slot].begin.store(0, std::memory_order_release);
  g_slots[slot].faulted.store(false, std::memory_order_release);
  {
    std::lock_guard lock(g_paths_mutex);
    g_paths.erase(slot);
  }
  g_slots[slot].used.store(false, std::memory_order_release);
}

bool mapping_faulted(int slot) noexcept {
  return slot >= 0 && g_slots[slot].faulted.load(std::memory_order_acquire);
}

void throw_truncated(const fs::path& path) {
  throw io_error(path.string() +
                 ": the file became shorter while it was being read (truncated or rewritten by "
                 "another program); nothing was written — run again once it is complete");
}

void check_mapped_inputs_intact() {
  const int high = g_high_water.load(std::memory_order_acquire);
  for (int i = 0; i < high; ++i) {
    if (!g_slots[i].faulted.load(std::memory_order_acquire)) continue;
    fs::path path;
    {
      std::lock_guard lock(g_paths_mutex);
      const auto it = g_paths.find(i);
      if (it == g_paths.end()) continue;  // released meanwhile
      path = it->second;
    }
    throw_truncated(path);
  }
}

}  // namespace revmerge
