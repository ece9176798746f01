-- wrk script of the reliability and soak tests (t/050, t/051): paced
-- heartbeats of many users, each with its own HS256 token.
--
--   LOAD_TOKENS       file of "id token" lines, one per user (required)
--   LOAD_RATE         requests per second of each thread (0: as fast as
--                     the connections go)
--   LOAD_STEADY       the first this many users of the file are "steady":
--                     1 request in LOAD_STEADY_EVERY goes to them in turn,
--                     the others to the rest ("churners") in turn; 0: all
--                     users in one turn
--   LOAD_STEADY_EVERY (2)
--   LOAD_STATUS_EVERY after every this many heartbeats, one GET of the
--                     last user's own status (0: never)
--   LOAD_SECONDS      wrk's -d: the last second is quiet (no new request),
--                     so that none is in flight when wrk stops
--   LOAD_CLOSE        1: "Connection: close" on every request (a connection
--                     per request), else keep-alive
--   LOAD_INVISIBLE    a churner whose id is a multiple of this appears
--                     offline (PUT) on odd turns and online again (PUT) on
--                     even turns instead of heartbeating (0: never)
--
-- done() prints one line:
--   RESULT sent answered 2xx 204 non2xx connect read write timeout seconds
-- sent counts the requests made (request() calls), answered the responses:
-- with a quiet end, sent - answered is the requests lost with their
-- connection.  Heartbeats are the 204s; a GET or PUT of status answers 200.

local ffi = require "ffi"

ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } load_timespec_t;
    int clock_gettime(int clk_id, load_timespec_t *tp);
]]

local ts = ffi.new("load_timespec_t")

local function now_ms()
    ffi.C.clock_gettime(1, ts)                    -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local threads = {}

function setup(thread)
    table.insert(threads, thread)
    thread:set("tid", #threads)
end

local function num(name, default)
    return tonumber(os.getenv(name) or "") or default
end

-- headers of the i-th user's requests
local function headers(i, extra)
    local h = { Authorization = "Bearer " .. tokens[i] }
    if close then
        h.Connection = "close"
    end
    for k, v in pairs(extra or {}) do
        h[k] = v
    end
    return h
end

function init(args)
    ids, hbs, tokens = {}, {}, {}
    close = os.getenv("LOAD_CLOSE") == "1"

    for line in io.lines(os.getenv("LOAD_TOKENS")) do
        local id, token = line:match("^(%d+) (%S+)$")
        if id then
            ids[#ids + 1] = id
            tokens[#tokens + 1] = token
            hbs[#hbs + 1] = wrk.format("POST", "/v1/heartbeat",
                                       headers(#tokens))
        end
    end

    assert(#ids > 0, "no tokens in LOAD_TOKENS")

    local rate = num("LOAD_RATE", 0)
    interval = rate > 0 and 1000 / rate or 0
    steady = math.min(num("LOAD_STEADY", 0), #ids)
    steady_every = math.max(num("LOAD_STEADY_EVERY", 2), 1)
    status_every = num("LOAD_STATUS_EVERY", 0)
    invisible = num("LOAD_INVISIBLE", 0)

    if steady == 0 or steady == #ids then
        steady, steady_every = 0, 0
    end

    -- threads start apart in both turns (a golden-ratio stride: the
    -- thread count is not known here)
    local apart = ((tid - 1) * 0.618034) % 1
    sn = math.floor(steady * apart)
    cn = math.floor((#ids - steady) * apart)
    n = 0
    last = nil
    slot = 0
    local secs = num("LOAD_SECONDS", 0)
    quiet = secs > 1 and now_ms() + (secs - 1) * 1000 or math.huge

    ok, hb, bad = 0, 0, 0
end

-- the i-th user's request of turn "lap"
local function user_request(i, lap)
    local id = ids[i]
    last = i

    if invisible > 0 and i > steady and tonumber(id) % invisible == 0 then
        local body = lap % 2 == 1 and '{"status":"offline"}'
                                  or '{"status":"online"}'
        return wrk.format("PUT", "/v1/status",
                          headers(i, { ["Content-Type"] = "application/json" }),
                          body)
    end

    return hbs[i]
end

function request()
    n = n + 1

    if status_every > 0 and last and n % (status_every + 1) == 0 then
        return wrk.format("GET", "/v1/status/" .. ids[last], headers(last))
    end

    if steady > 0 and n % steady_every == 0 then
        sn = sn + 1
        return user_request((sn - 1) % steady + 1, 0)
    end

    local churners = #ids - steady
    cn = cn + 1
    return user_request(steady + (cn - 1) % churners + 1,
                        math.floor((cn - 1) / churners))
end

-- pacing: each request takes the next free slot of the thread's timeline
function delay()
    if interval == 0 and quiet == math.huge then
        return 0
    end

    local now = now_ms()

    if now >= quiet then
        return 3600000
    end

    slot = math.max(slot + interval, now)
    return math.max(slot - now, 0)
end

function response(status, headers, body)
    if status >= 200 and status < 300 then
        ok = ok + 1
        if status == 204 then
            hb = hb + 1
        end
    else
        bad = bad + 1
        if bad <= 5 then
            io.stderr:write("load: answer ", status, ": ", body or "", "\n")
        end
    end
end

function done(summary, latency, requests)
    local s, o, h, b = 0, 0, 0, 0
    for _, t in ipairs(threads) do
        s = s + t:get("n")
        o = o + t:get("ok")
        h = h + t:get("hb")
        b = b + t:get("bad")
    end

    local e = summary.errors
    io.write(string.format("RESULT %d %d %d %d %d %d %d %d %d %.3f\n",
        s, summary.requests, o, h, b, e.connect, e.read, e.write, e.timeout,
        summary.duration / 1e6))
end
