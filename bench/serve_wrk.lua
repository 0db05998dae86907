-- wrk script of bench/serve.py: each connection POSTs Test photos (raw JPEG bytes) in turn to /classify, a thread
-- stops after its share of the request count, and the summary is printed as one JSON line.
-- Arguments (after --): a file listing photo paths, one a line; requests per thread.
local requests, sent, limit, index = {}, 0, 0, 0

function init(args)
  for path in io.lines(args[1]) do
    local file = assert(io.open(path, "rb"))
    requests[#requests + 1] = wrk.format("POST", "/classify", { ["Content-Type"] = "image/jpeg" }, file:read("*a"))
    file:close()
  end
  limit = tonumber(args[2])
  index = (tonumber(tostring({}):match("0x(%x+)"), 16) or 0) % #requests  -- threads start at different photos
end

function request()
  sent = sent + 1
  index = index % #requests + 1
  return requests[index]
end

function response(status, headers, body)
  if sent >= limit then
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, errors.status, errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
