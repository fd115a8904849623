package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local common = require("report")
done = common.done
