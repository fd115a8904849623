-- Prints one JSON line that bench/run.py reads: throughput, latency percentiles, errors.
local common = {}

function common.done(summary, latency, requests)
  local non2xx = summary.errors.status
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "rps": %.2f, "p50_ms": %.3f, ' ..
    '"p99_ms": %.3f, "max_ms": %.3f, "socket_errors": %d, "non_2xx": %d}\n',
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    non2xx))
end

return common
