-- wrk script: every request carries the next key of a file in X-API-Key,
-- round-robin. Requests are pre-formatted in init() so the load generator
-- spends its time on sockets, not on Lua string building.
--
--   wrk -t1 -c64 -d10s --latency -s bench/wrk/rotate.lua URL -- KEYS_FILE
--
-- done() prints one machine-readable line for bench/proxy.sh:
--   RESULT <req/s> <p50 us> <p99 us> <requests> <non-2xx/3xx> <socket errors>

local requests = {}
local n, i = 0, 0
local started = 0

function setup(thread)
   started = started + 1
   thread:set("tid", started)
end

function init(args)
   local path = args[1] or error("usage: -- KEYS_FILE")
   for key in io.lines(path) do
      if #key > 0 then
         n = n + 1
         requests[n] = wrk.format(nil, nil, { ["X-API-Key"] = key })
      end
   end
   if n == 0 then error("no keys in " .. path) end
   -- Each thread starts at its own offset so threads do not send the
   -- same keys in step.
   i = ((tid or 1) - 1) * math.floor(n / 16) % n
end

function request()
   i = i % n + 1
   return requests[i]
end

function done(summary, latency, _)
   local e = summary.errors
   io.write(string.format("RESULT %.1f %d %d %d %d %d\n",
      summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(99),
      summary.requests, e.status, e.connect + e.read + e.write + e.timeout))
end
