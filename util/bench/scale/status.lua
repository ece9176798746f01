-- wrk script of util/bench/scale: status reads of 100 ids at a fixed
-- rate from SCALE_CALLERS distinct callers (ids 1..SCALE_CALLERS, each
-- subscribed to SCALE_SUBS users, see util/bench/scale/run for which),
-- each reading 100 of its subscriptions, the callers in turn.  The
-- caller is named by X-User-Id (the bench's status location has
-- presence_identity $http_x_user_id: no token check in the figures).
--
--   SCALE_STATUS_RATE  requests per second of the thread (wrk -t1)
--   SCALE_STATUS_SECS  after this many seconds no new request
--
-- done() prints
--   RESULT sent answered 2xx non2xx 0 connect read write timeout seconds
--   LATENCY p50 <ms> p99 <ms> max <ms>

local ffi = require "ffi"

ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } scale_timespec_t;
    int clock_gettime(int clk_id, scale_timespec_t *tp);
]]

local ts = ffi.new("scale_timespec_t")

local function now_ms()
    ffi.C.clock_gettime(1, ts)                    -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local function num(name, default)
    return tonumber(os.getenv(name) or "") or default
end

local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    local users = num("SCALE_USERS", 5000000)
    local subs = num("SCALE_SUBS", 1000)
    callers = num("SCALE_CALLERS", 10000)
    local rate = num("SCALE_STATUS_RATE", 1000)
    interval = 1000 / rate

    -- caller c subscribes to ((c - 1 + j * s + 1) % users) + 1 for
    -- j = 1..subs, s = floor(users / subs): it reads every (subs/100)-th
    local s = math.floor(users / subs)
    local every = math.max(1, math.floor(subs / 100))
    reqs = {}
    for c = 1, callers do
        local ids = {}
        for k = 1, 100 do
            local j = k * every
            ids[k] = ((c - 1 + j * s + 1) % users) + 1
        end
        reqs[c] = wrk.format("GET", "/v1/status?ids=" .. table.concat(ids, ","),
                             { ["X-User-Id"] = tostring(c) })
    end

    t0 = now_ms()
    slot = t0
    quiet = t0 + num("SCALE_STATUS_SECS", 180) * 1000
    cursor = 0
    n, ok, bad = 0, 0, 0
end

function request()
    n = n + 1
    cursor = cursor % callers + 1
    return reqs[cursor]
end

function delay()
    local now = now_ms()

    if now >= quiet then
        return 3600000
    end

    slot = math.max(slot + interval, now - 1000)

    if slot >= quiet then
        return 3600000
    end

    return math.max(slot - now, 0)
end

function response(status, headers, body)
    if status == 200 then
        ok = ok + 1
    else
        bad = bad + 1
        if bad <= 5 then
            io.stderr:write("status: answer ", status, ": ",
                            (body or ""):sub(1, 300), "\n")
        end
    end
end

function done(summary, latency, requests)
    local s, o, b = 0, 0, 0
    for _, t in ipairs(threads) do
        s = s + t:get("n")
        o = o + t:get("ok")
        b = b + t:get("bad")
    end

    local e = summary.errors
    io.write(string.format("RESULT %d %d %d %d 0 %d %d %d %d %.3f\n",
        s - 1, summary.requests, o, b, e.connect, e.read, e.write,
        e.timeout, summary.duration / 1e6))
    io.write(string.format("LATENCY p50 %.3f p99 %.3f max %.3f ms\n",
        latency:percentile(50) / 1000, latency:percentile(99) / 1000,
        latency.max / 1000))
end
