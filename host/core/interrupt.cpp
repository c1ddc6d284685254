#include "core/interrupt.hpp"

#include <atomic>
#include <csignal>
#include <string>

#include "revmerge/error.hpp"

namespace revmerge {
namespace {

std::atomic<int> g_signal{0};
static_assert(std::atomic<int>::is_always_lock_free, "the signal handler needs a lock-free flag");

extern "C" void on_signal(int sig) { g_signal.store(sig, std::memory_order_relaxed); }

}  // namespace

void install_interrupt_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

void request_interrupt() noexcept { g_signal.store(SIGINT, std::memory_order_relaxed); }
void clear_interrupt() noexcept { g_signal.store(0, std::memory_order_relaxed); }

void throw_if_interrupted(const char* where) {
  if (const int sig = g_signal.load(std::memory_order_relaxed); sig != 0)
    throw interrupted(std::string(where) + ": interrupted by " +
                      (sig == SIGTERM ? "SIGTERM" : "SIGINT") + "; nothing was written");
}

}  // namespace revmerge
