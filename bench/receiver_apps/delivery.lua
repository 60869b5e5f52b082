-- wrk script: POST one signed 1 KB item.low_stock body, a unique X-Stockaj-Delivery per request.
--
-- The signature covers only the body, so one signed body is valid under any
-- delivery id. Usage (bench_receiver.py builds this line):
--   wrk -t2 -c32 -d10s --timeout 10s -s delivery.lua http://127.0.0.1:PORT/webhooks/stockaj \
--       -- BODY_FILE SIGNATURE RUN_PREFIX
-- Ids are RUN_PREFIX-THREAD-COUNTER, so runs against one database never collide.
-- No response() callback: it would make wrk hand every response to Lua.
-- done() prints one line, "WRK_JSON {...}", with latency percentiles in microseconds.

local threads = {}
local counter = 0
local head, tail

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  local file = assert(io.open(args[1], "rb"))
  local body = file:read("*a")
  file:close()
  head = "POST " .. wrk.path .. " HTTP/1.1\r\n"
    .. "Host: " .. wrk.host .. ":" .. wrk.port .. "\r\n"
    .. "Content-Type: application/json\r\n"
    .. "User-Agent: Stockaj-Webhooks/1.0\r\n"
    .. "Content-Length: " .. #body .. "\r\n"
    .. "X-Stockaj-Event: item.low_stock\r\n"
    .. "X-Stockaj-Signature: " .. args[2] .. "\r\n"
    .. "X-Stockaj-Delivery: " .. args[3] .. "-" .. tid .. "-"
  tail = "\r\n\r\n" .. body
end

function request()
  counter = counter + 1
  return head .. counter .. tail
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, '
      .. '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, '
      .. '"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
