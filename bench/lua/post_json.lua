-- POST the body in BENCH_BODY; "{n}" in it becomes a per-thread counter (unique e-mails).
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local common = require("report")
done = common.done
local body = os.getenv("BENCH_BODY")
local counter = 0
local threads = 0

function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end

function request()
  counter = counter + 1
  local payload = body:gsub("{n}", tostring(thread_id or 0) .. "-" .. tostring(counter))
  local headers = {}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  headers["Content-Type"] = "application/json"
  return wrk.format("POST", nil, headers, payload)
end
