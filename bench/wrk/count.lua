-- wrk script: like rotate.lua (next key of a file in X-API-Key per request)
-- and also counts response statuses through a response() hook, for the
-- forged-key floods of bench/proxy.sh. The hook makes wrk parse every
-- response's headers, so it is a little slower than rotate.lua.
--
--   wrk -t1 -c64 -d10s --latency -s bench/wrk/count.lua URL -- KEYS_FILE
--
-- done() prints:
--   RESULT <req/s> <p50 us> <p99 us> <requests> <non-2xx/3xx> <socket errors>
--   STATUS <2xx> <401> <other 4xx> <5xx> <other>

local threads = {}
local requests = {}
local n, i = 0, 0
s2xx, s401, s4xx, s5xx, sother = 0, 0, 0, 0, 0

function setup(thread)
   table.insert(threads, thread)
   thread:set("tid", #threads)
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

function response(status, _, _)
   if status == 401 then
      s401 = s401 + 1
   elseif status >= 200 and status < 300 then
      s2xx = s2xx + 1
   elseif status >= 500 then
      s5xx = s5xx + 1
   elseif status >= 400 then
      s4xx = s4xx + 1
   else
      sother = sother + 1
   end
end

function done(summary, latency, _)
   local e = summary.errors
   io.write(string.format("RESULT %.1f %d %d %d %d %d\n",
      summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(99),
      summary.requests, e.status, e.connect + e.read + e.write + e.timeout))
   local t = { 0, 0, 0, 0, 0 }
   for _, thread in ipairs(threads) do
      t[1] = t[1] + thread:get("s2xx")
      t[2] = t[2] + thread:get("s401")
      t[3] = t[3] + thread:get("s4xx")
      t[4] = t[4] + thread:get("s5xx")
      t[5] = t[5] + thread:get("sother")
   end
   io.write(string.format("STATUS %d %d %d %d %d\n", t[1], t[2], t[3], t[4], t[5]))
end
