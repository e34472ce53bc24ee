// A small thread pool: workers sleep on a condition variable (no spinning, so a busy machine loses little),
// items are taken one at a time from a shared counter (a thread the OS deschedules holds up one item, not a
// share of the job), and the calling thread works too. A call made while the pool is busy, or from inside a
// job, runs on the calling thread alone.
#pragma once

#include <cstddef>
#include <functional>

namespace fz {

// Threads to use by default: FLOATZIP_NUM_THREADS if set, else the CPUs this process may run on.
int default_threads();

// fn(i) for i in [0, n), on up to `threads` threads. Rethrows the first exception an item raised.
void parallel_for(size_t n, int threads, const std::function<void(size_t)>& fn);

}  // namespace fz
