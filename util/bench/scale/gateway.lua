-- wrk script of util/bench/scale: a chat gateway reporting its users in
-- bulk (API.md "Gateways"): POST /v1/presence with the gateway credential,
-- bodies of SCALE_BATCH ids (10,000), so that each of the SCALE_USERS
-- users (ids 1..SCALE_USERS, in blocks of SCALE_BATCH) is refreshed every
-- SCALE_REFRESH seconds.  One thread (wrk -t1); requests are paced, not
-- as fast as they go.
--
--   ramp    the first SCALE_RAMP seconds the blocks come online one after
--           the other (a thundering herd of all users within SCALE_RAMP):
--           the first time of each block is spread evenly over the first
--           95% of SCALE_RAMP (the last block is sent 3 s before the end
--           of a 60 s ramp, so that the node's part shows in the time it
--           takes), and a block due comes before any refresh; blocks
--           already online are refreshed in the other requests
--   churn   then SCALE_STEADY seconds in periods of SCALE_PERIOD: in
--           period m (1, 2, ...) the users whose id % 100 == m are "gone"
--           (1% drop out) and those of period m - 1 are online again
--           (as many come back); SCALE_CHURN=0: no churn
--   quiet   after SCALE_RAMP + SCALE_STEADY no new request (wrk's -d is a
--           little longer), so that no period is left half sent
--
-- SCALE_RAMP_ONLY=1 runs the ramp alone, refreshing on (util/bench/scale/run
-- kills it once every user is online, then starts the churn with
-- SCALE_RAMP=0: no user is gone before it was online once).
--
-- done() prints
--   RESULT sent answered 2xx non2xx ids connect read write timeout seconds
-- ids: ids carried by the 2xx answers.

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
    users = num("SCALE_USERS", 5000000)
    batch = num("SCALE_BATCH", 10000)
    refresh = num("SCALE_REFRESH", 10)
    ramp = num("SCALE_RAMP", 60)
    period = num("SCALE_PERIOD", 60)
    steady = num("SCALE_STEADY", 180)
    churn = num("SCALE_CHURN", 1) ~= 0
    blocks = math.ceil(users / batch)
    interval = refresh * 1000 / blocks
    headers = {
        ["Authorization"] = "Bearer " .. (os.getenv("SCALE_GATEWAY_SECRET") or ""),
        ["Content-Type"] = "application/json",
    }

    -- SCALE_RAMP_ONLY=1: the ramp alone, refreshing on after it, no
    -- churn, no quiet end (util/bench/scale/run stops it once every user
    -- is online)
    ramp_only = num("SCALE_RAMP_ONLY", 0) ~= 0

    t0 = now_ms()
    slot = t0
    quiet = ramp_only and math.huge or t0 + (ramp + steady) * 1000
    cursor = 0
    sent = 0             -- blocks sent once: 1..sent have been online
    n, ok, bad, ids = 0, 0, 0, 0
    pending = {}
end

-- the body of block b in churn period m (0: no one gone)
local function body(b, m)
    local first = (b - 1) * batch + 1
    local last = math.min(b * batch, users)
    local on, gone = {}, {}
    local out = m > 0 and m % 100 or -1

    for id = first, last do
        if id % 100 == out then
            gone[#gone + 1] = id
        else
            on[#on + 1] = id
        end
    end

    return '{"device":"ws","online":[' .. table.concat(on, ",")
           .. '],"gone":[' .. table.concat(gone, ",") .. ']}', last - first + 1
end

function request()
    n = n + 1
    local t = (now_ms() - t0) / 1000
    local active, m = blocks, 0

    if t < ramp or ramp_only then
        active = math.max(1, math.min(blocks,
                                      math.ceil(blocks * t / (ramp * 0.95))))
    elseif churn then
        -- a request paced into the quiet end is still of the last period
        m = math.min(math.floor((t - ramp) / period) + 1,
                     math.max(1, math.floor(steady / period)))
    end

    local b, count

    if sent < active then
        -- a block due for the first time: before the refreshes (a cursor
        -- over all active blocks reached the newest only a round later)
        sent = sent + 1
        b, count = body(sent, m)
    else
        cursor = cursor % active + 1
        b, count = body(cursor, m)
    end

    pending[#pending + 1] = count
    return wrk.format("POST", "/v1/presence", headers, b)
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
    -- answers come in order per connection, not across them: the count
    -- of a request is the batch size except for the last block
    local count = table.remove(pending, 1) or batch

    if status >= 200 and status < 300 then
        ok = ok + 1
        ids = ids + count
    else
        bad = bad + 1
        if bad <= 5 then
            io.stderr:write("gateway: answer ", status, ": ",
                            (body or ""):sub(1, 300), "\n")
        end
    end
end

function done(summary, latency, requests)
    local s, o, b, i = 0, 0, 0, 0
    for _, t in ipairs(threads) do
        s = s + t:get("n")
        o = o + t:get("ok")
        b = b + t:get("bad")
        i = i + t:get("ids")
    end

    local e = summary.errors
    io.write(string.format("RESULT %d %d %d %d %d %d %d %d %d %.3f\n",
        s - 1, summary.requests, o, b, i, e.connect, e.read, e.write,
        e.timeout, summary.duration / 1e6))
    io.write(string.format("LATENCY p50 %.3f p99 %.3f max %.3f ms\n",
        latency:percentile(50) / 1000, latency:percentile(99) / 1000,
        latency.max / 1000))
end
