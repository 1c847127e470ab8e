-- wrk script for bench/run: Dify's batch-status PATCH, API keys in turn.
--
--   wrk ... -s bench/status.lua http://127.0.0.1:PORT -- MODE PATH KEYS NKEYS
--           [FILE]
--
--   MODE   valid    PATCH {PATH}/datasets/{id}/documents/status/enable with
--                   a 3-id body (the module lets it through, or limits it)
--          invalid  alternately a bad action ("explode", valid body) and a
--                   bad body (3 ids, the last not a UUID): both are 400s
--          file     the same as valid, with the body read from FILE
--   PATH   the path before "/datasets", e.g. "/b/v1" (selects the location)
--   KEYS   API keys are "<KEYS><i>", i = 0 .. NKEYS-1
--   NKEYS  how many API keys (100)
--
-- Every request is built in init() (the requests of a run cycle through
-- them), so wrk spends nothing on Lua per request but a table lookup;
-- there is no response() so wrk does not hand responses to Lua.
--
-- done() prints one machine-readable line for bench/run:
--   BENCH requests=N duration_us=N rps=F p50_us=N p90_us=N p99_us=N
--         max_us=N status_errors=N connect=N read=N write=N timeout=N
-- (status_errors: responses with a status > 399, as wrk counts them).

local dataset = "5b7ac1f4-2c9e-4d8a-b3f6-0e1d2c3b4a59"
local ids = {
    "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
    "0f9e8d7c-6b5a-4e3d-9c2b-1a0f9e8d7c6b",
    "9c8b7a69-5847-4362-a514-f3e2d1c0b9a8",
}

local requests = {}
local n = 0
local i = 0

-- each thread starts at another point of the cycle (setup() sets the
-- global thread_no in each thread's environment)
local threads = 0

function setup(thread)
    thread:set("thread_no", threads)
    threads = threads + 1
end

local function body(list)
    return '{"document_ids": ["' .. table.concat(list, '", "') .. '"]}'
end

function init(args)
    local mode = args[1] or "valid"
    local path = args[2] or "/v1"
    local keys = args[3] or "dataset-bench-"
    local nkeys = tonumber(args[4] or "100")
    local file = args[5]

    local good = body(ids)

    if mode == "file" then
        local f = assert(io.open(file, "rb"))
        good = f:read("*a")
        f:close()
    end

    local bad = body({ ids[1], ids[2], "not-a-uuid-at-all" })
    local route = path .. "/datasets/" .. dataset .. "/documents/status/"

    for k = 0, nkeys - 1 do
        local headers = {
            ["Authorization"] = "Bearer " .. keys .. k,
            ["Content-Type"] = "application/json",
        }

        if mode == "valid" or mode == "file" then
            requests[#requests + 1] =
                wrk.format("PATCH", route .. "enable", headers, good)

        elseif mode == "invalid" then
            requests[#requests + 1] =
                wrk.format("PATCH", route .. "explode", headers, good)
            requests[#requests + 1] =
                wrk.format("PATCH", route .. "disable", headers, bad)

        else
            error("bench/status.lua: unknown mode " .. mode)
        end
    end

    n = #requests
    i = ((thread_no or 0) * 37) % n
end

function request()
    i = i + 1
    if i > n then
        i = 1
    end
    return requests[i]
end

function done(summary, latency, requests)
    local e = summary.errors
    local secs = summary.duration / 1e6

    io.write(string.format(
        "BENCH requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d"
        .. " p99_us=%d max_us=%d status_errors=%d connect=%d read=%d"
        .. " write=%d timeout=%d\n",
        summary.requests, summary.duration, summary.requests / secs,
        latency:percentile(50), latency:percentile(90),
        latency:percentile(99), latency.max, e.status, e.connect, e.read,
        e.write, e.timeout))
end
