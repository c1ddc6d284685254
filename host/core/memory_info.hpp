#pragma once
// Memory sizes as users write them, and what the operating system reports about memory.
#include <cstdint>
#include <string>
#include <string_view>

namespace revmerge {

/// "2GiB", "1.5 GB", "512MiB", "800M", "1073741824": binary (KiB, MiB, GiB, TiB; K, M, G, T)
/// and decimal (kB, MB, GB, TB) units. Throws usage_error naming `option` for anything else.
std::uint64_t parse_byte_size(std::string_view text, std::string_view option);
/// "1.50 GiB", "312.0 MiB", "512 B": `decimals` digits after the point, or by default two below
/// 100 units and one above.
std::string format_bytes(std::uint64_t bytes, int decimals = -1);
/// MemAvailable from /proc/meminfo (0 when unknown).
std::uint64_t host_memory_available();
/// Peak resident set size of this process so far (VmHWM), bytes; 0 when unknown.
std::uint64_t peak_rss_bytes();

}  // namespace revmerge
