-- wrk script for t/40-faults-load.t: valid batch-status PATCHes for a
-- set of API keys, some with a generous limit and some over theirs, and a
-- count of every response the client saw.
--
--   wrk -t T -c C -d D -s t/lib/load.lua http://127.0.0.1:PORT -- \
--       OUT KEYPREFIX MODES NGEN NTIGHT
--
--   OUT        file that done() writes the counts to (see below)
--   KEYPREFIX  API keys are KEYPREFIX .. MODE .. "-g" .. i (generous) and
--              KEYPREFIX .. MODE .. "-t" .. i (tight), i = 1 .. N
--   MODES      comma-separated fallback modes, e.g. "allow,deny,local":
--              generous keys go to /MODE/g/v1/..., tight ones to
--              /MODE/t/v1/... (the test's nginx has one location each)
--   NGEN       generous keys per mode
--   NTIGHT     tight keys per mode
--
-- Every request is built in init(), so that wrk spends little on Lua per
-- request; response() counts statuses per "status X-Dify-Status" pair.
-- wrk runs until its -d or SIGINT, then done() writes, one per line:
--
--   status STATUS DIFY COUNT         (summed over threads)
--   wrk requests=N duration_us=N connect=N read=N write=N timeout=N
--       status_errors=N p50_us=N p99_us=N max_us=N
--
-- The test counts what nginx sent from its access log (exact, whatever
-- happens to connections); these figures are what wrk received.

local dataset = "5b7ac1f4-2c9e-4d8a-b3f6-0e1d2c3b4a59"
local ids = {
    "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
    "0f9e8d7c-6b5a-4e3d-9c2b-1a0f9e8d7c6b",
}

local threads = {}
local nthreads = 0

function setup(thread)
    thread:set("thread_no", nthreads)
    nthreads = nthreads + 1
    threads[nthreads] = thread
end

local requests = {}
local n = 0
local i = 0

-- read by done() through thread:get()
counts = {}
out = nil

local function split(s)
    local list = {}
    for w in string.gmatch(s, "[^,]+") do
        list[#list + 1] = w
    end
    return list
end

function init(args)
    out = args[1]
    local prefix = args[2] or "dataset-load-"
    local modes = split(args[3] or "allow,deny,local")
    local ngen = tonumber(args[4] or "8")
    local ntight = tonumber(args[5] or "4")

    local body = '{"document_ids": ["' .. table.concat(ids, '", "') .. '"]}'

    local function add(path, key)
        requests[#requests + 1] = wrk.format("PATCH",
            path .. "/datasets/" .. dataset .. "/documents/status/enable",
            { ["Authorization"] = "Bearer " .. key,
              ["Content-Type"] = "application/json" },
            body)
    end

    -- interleaved, so that every key is asked all the time
    local most = math.max(ngen, ntight)
    for k = 1, most do
        for _, mode in ipairs(modes) do
            if k <= ngen then
                add("/" .. mode .. "/g/v1", prefix .. mode .. "-g" .. k)
            end
            if k <= ntight then
                add("/" .. mode .. "/t/v1", prefix .. mode .. "-t" .. k)
            end
        end
    end

    n = #requests
    i = ((thread_no or 0) * 7) % n
end

function request()
    i = i + 1
    if i > n then
        i = 1
    end
    return requests[i]
end

function response(status, headers, body)
    local k = status .. " " .. (headers["X-Dify-Status"] or "-")
    counts[k] = (counts[k] or 0) + 1
end

function done(summary, latency, reqs)
    local total = {}
    local file = nil

    for _, t in ipairs(threads) do
        file = file or t:get("out")
        local c = t:get("counts") or {}
        for k, v in pairs(c) do
            total[k] = (total[k] or 0) + v
        end
    end

    local fh = io.stdout
    if file then
        fh = assert(io.open(file, "w"))
    end

    for k, v in pairs(total) do
        fh:write("status " .. k .. " " .. v .. "\n")
    end

    local e = summary.errors
    fh:write(string.format(
        "wrk requests=%d duration_us=%d connect=%d read=%d write=%d"
        .. " timeout=%d status_errors=%d p50_us=%d p99_us=%d max_us=%d\n",
        summary.requests, summary.duration, e.connect, e.read, e.write,
        e.timeout, e.status, latency:percentile(50),
        latency:percentile(99), latency.max))

    if fh ~= io.stdout then
        fh:close()
    end
end
