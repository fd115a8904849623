-- Each request as the next of many logged-in customers (one session and account each), buying
-- the next of several products: a shop's load, not one row everyone fights over.
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local common = require("report")
done = common.done

local sessions = {}
for line in io.lines(os.getenv("BENCH_SESSIONS_FILE")) do
  local cookie, csrf, account, email = line:match("([^\t]+)\t([^\t]+)\t([^\t]+)\t([^\t]+)")
  sessions[#sessions + 1] = {cookie = cookie, csrf = csrf, account = account, email = email}
end
local products = {}
for id in string.gmatch(os.getenv("BENCH_PRODUCTS") or "", "[^,]+") do products[#products + 1] = id end
local method = os.getenv("BENCH_METHOD") or "GET"
local body = os.getenv("BENCH_BODY") or ""
local counter = 0

function init(args)
  counter = math.random(1, #sessions)
end

function request()
  counter = counter + 1
  local s = sessions[(counter % #sessions) + 1]
  local headers = {Cookie = s.cookie, ["X-CSRF-Token"] = s.csrf}
  if method == "GET" then
    return wrk.format("GET", nil, headers)
  end
  headers["Content-Type"] = "application/json"
  local product = products[(counter % math.max(#products, 1)) + 1] or "0"
  local other = sessions[((counter + 1) % #sessions) + 1]
  local payload = body:gsub("{account}", s.account):gsub("{product}", product)
  payload = payload:gsub("{other}", other.account):gsub("{email}", s.email)
  return wrk.format(method, nil, headers, payload)
end

if os.getenv("BENCH_DEBUG") then
  local shown = false
  function response(status, headers, body)
    if status >= 300 and not shown then
      shown = true
      io.stderr:write("first failure: ", status, " ", body, "\n")
    end
  end
end
