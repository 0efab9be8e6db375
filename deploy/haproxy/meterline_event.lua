-- meterline_event: one Meterline v1 request event per HTTP response HAProxy
-- sends, queued in memory and posted in NDJSON batches to the collector's
-- POST /v1/events by a background task with HAProxy's core.httpclient
-- (HAProxy 2.6 or later, built with Lua 5.3; Debian's haproxy is). See
-- meterline.cfg.tmpl for the wiring:
--
--   global
--     setenv METERLINE_COLLECTOR_URL http://127.0.0.1:8080
--     lua-load /etc/haproxy/meterline_event.lua
--   frontend api
--     http-request set-var(txn.meterline_key) req.fhdr(x-api-key-id)
--     ...
--     http-after-response set-var(txn.meterline) lua.meterline_event
--
-- The event (schemas/event.schema.json) is built from transaction variables
-- the configuration sets, so that it decides where each value comes from:
--   id             unique-id (unique-id-format, e.g. %[uuid()])
--   time           txn.meterline_t0, the request's arrival in ms since the
--                  epoch (date(0,ms)), as RFC 3339 UTC with milliseconds
--   api_key_id     txn.meterline_key; a request without it is not metered
--   customer_id    txn.meterline_customer (optional)
--   gateway        METERLINE_GATEWAY
--   method         txn.meterline_method (left out if not 1-16 letters)
--   route          txn.meterline_route (the upstream's X-Route, say), else
--                  txn.meterline_path; control bytes and bytes >= 0x80 are
--                  percent-encoded, cut to 1024 bytes
--   status         the status HAProxy sends (also its own 502, 503, 504)
--   latency_ms     from txn.meterline_t0 to the response headers
--   request_bytes  txn.meterline_req_bytes (Content-Length) if all digits
--   response_bytes txn.meterline_resp_bytes (Content-Length) if all digits
--   client_ip      src (Meterline anonymises it at ingest)
--   user_agent     txn.meterline_ua, cut to 512 bytes on a UTF-8 boundary
--   units          txn.meterline_units (the upstream's X-Units), else absent (1)
--
-- Values the gateway cannot vouch for (api_key_id, units) are passed as they
-- are: the collector rejects an invalid one, naming the field, and keeps
-- the rest of the batch; the rejection is logged here and counted.
--
-- Settings, read from the environment at load time (HAProxy's global
-- `setenv` sets them before `lua-load`); a bad one stops HAProxy at start:
--   METERLINE_COLLECTOR_URL   collector base URL, http://host:port (required;
--                             an IP address, or a name HAProxy can resolve)
--   METERLINE_INGEST_TOKEN    bearer token with scope ingest (default none)
--   METERLINE_GATEWAY         gateway name stored in each event (default:
--                             the collector uses the token's name)
--   METERLINE_BATCH_SIZE      events per POST (default 500)
--   METERLINE_FLUSH_MS        longest wait of a queued event (default 1000)
--   METERLINE_QUEUE_SIZE      events held, queued or being sent (default
--                             10000); beyond it events are dropped, counted
--   METERLINE_TIMEOUT_MS      timeout of one POST (default 10000)
--   METERLINE_MAX_RETRY_MS    how long a batch is retried (default 60000)
--
-- Retries: network errors, 429 and 5xx are retried with exponential backoff
-- (100 ms doubling to 10 s, jittered), never sooner than the collector's
-- Retry-After; 413 splits the batch in halves; another 4xx drops it (logged,
-- counted). A retried batch is stored once: the pipeline deduplicates ids.
--
-- Stopping: HAProxy 2.6 gives Lua no hook at soft-stop, and the process
-- exits as soon as its last connection ends, without waiting for tasks.
-- With `grace` set in the global section, SIGUSR1 first marks the process
-- as stopping (core.get_info().Stopping) while the listeners keep serving;
-- the task sees it within 100 ms and from then on sends every event at
-- once. Events still queued when the grace ends are lost, so give grace at
-- least the time of one POST (a few hundred ms). SIGTERM/SIGINT (hard stop)
-- loses what is queued.
--
-- Counters: the service lua.meterline_metrics answers them in Prometheus'
-- text format (meterline_client_*, the names gateway/httpmeter uses).

local core = core
local byte, concat, find, fmt, gsub, sub = string.byte, table.concat, string.find, string.format, string.gsub, string.sub
local floor, tonumber, tostring = math.floor, tonumber, tostring

local MAX_ROUTE_BYTES = 1024
local MAX_UA_BYTES = 512
local MAX_LOGGED_REJECTIONS = 10

-- setting reads a numeric setting from the environment within [lo, hi].
local function setting(name, default, lo, hi)
    local s = os.getenv(name)
    if s == nil or s == "" then
        return default
    end
    local n = tonumber(s)
    if not n or n ~= floor(n) or n < lo or n > hi then
        error(fmt("meterline: %s=%q must be a whole number from %d to %d", name, s, lo, hi))
    end
    return floor(n)
end

local url = os.getenv("METERLINE_COLLECTOR_URL") or ""
if not find(url, "^https?://[^/%s]+/?$") then
    error(fmt("meterline: METERLINE_COLLECTOR_URL=%q must be the collector's base URL, http://host:port", url))
end
local gateway = os.getenv("METERLINE_GATEWAY") or ""
if #gateway > 128 or find(gateway, "[%c\128-\255\"\\]") then
    error("meterline: METERLINE_GATEWAY must be at most 128 printable ASCII characters")
end
local token = os.getenv("METERLINE_INGEST_TOKEN") or ""
if find(token, "[%c%s]") then
    error("meterline: METERLINE_INGEST_TOKEN holds white space or control characters")
end

local conf = {
    url = gsub(url, "/$", "") .. "/v1/events",
    batch_size = setting("METERLINE_BATCH_SIZE", 500, 1, 10000),
    flush_ms = setting("METERLINE_FLUSH_MS", 1000, 10, 3600000),
    queue_size = setting("METERLINE_QUEUE_SIZE", 10000, 1, 10000000),
    timeout_ms = setting("METERLINE_TIMEOUT_MS", 10000, 100, 600000),
    max_retry_ms = setting("METERLINE_MAX_RETRY_MS", 60000, 0, 86400000),
}
conf.queue_size = math.max(conf.queue_size, conf.batch_size)
local headers = { ["content-type"] = { "application/x-ndjson" } }
if token ~= "" then
    headers["authorization"] = { "Bearer " .. token }
end

-- The queue: events (NDJSON lines) from head to tail, each with the time it
-- was queued. held counts the queued events and those of the batch being
-- sent, so that a slow collector cannot make the process hold more than
-- queue_size events.
local q, qt = {}, {}
local head, tail = 1, 0
local held = 0

local stats = {
    enqueued = 0, sent = 0, rejected = 0, retries = 0,
    queue_full = 0, refused = 0, retries_exhausted = 0,
}

local function now_ms()
    local t = core.now()
    return t.sec * 1000 + floor(t.usec / 1000)
end

-- json_string quotes s as a JSON string. Bytes >= 0x80 pass through: the
-- collector checks UTF-8 itself and rejects the event naming the field.
local escapes = { ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }
local function json_string(s)
    return '"' .. gsub(s, '[%c"\\]', function(c)
        return escapes[c] or fmt("\\u%04x", byte(c))
    end) .. '"'
end

-- clean_route percent-encodes control bytes and bytes >= 0x80 and cuts the
-- result to 1024 bytes.
local function clean_route(s)
    s = gsub(s, "[%c\128-\255]", function(c) return fmt("%%%02X", byte(c)) end)
    if #s > MAX_ROUTE_BYTES then
        s = sub(s, 1, MAX_ROUTE_BYTES)
    end
    return s
end

-- cut_utf8 cuts s to at most n bytes without splitting a UTF-8 sequence.
local function cut_utf8(s, n)
    if #s <= n then
        return s
    end
    local i = n + 1
    while i > 1 and i > n - 3 do
        local b = byte(s, i)
        if b < 0x80 or b >= 0xC0 then -- i starts a character: cut before it
            break
        end
        i = i - 1
    end
    return sub(s, 1, i - 1)
end

-- units_json renders units: a plain decimal is copied as it is (without
-- leading zeros), anything else is sent as a string so the collector
-- rejects the event naming the field rather than billing a guess.
local function units_json(s)
    if find(s, "^%d+$") or find(s, "^%d+%.%d+$") then
        return (gsub(s, "^0+(%d)", "%1"))
    end
    return json_string(s)
end

local function rfc3339_ms(ms)
    local sec = floor(ms / 1000)
    return os.date("!%Y-%m-%dT%H:%M:%S", sec) .. fmt(".%03dZ", ms - sec * 1000)
end

local function var(txn, name)
    local v = txn:get_var("txn.meterline_" .. name)
    if v == nil or v == "" then
        return nil
    end
    return tostring(v)
end

-- event returns the JSON event of the transaction, or nil and why not.
local function event(txn)
    local key = var(txn, "key")
    if not key then
        return nil, "unmetered"
    end
    local id = txn.f:unique_id()
    if not id or id == "" then
        return nil, "no unique-id (set unique-id-format)"
    end
    local status = tonumber(txn.f:status())
    if not status or status < 100 or status > 599 then
        return nil, "no status"
    end
    local t0 = tonumber(var(txn, "t0") or "")
    local now = now_ms()
    if not t0 then
        t0 = now
    end
    local f = {
        '{"id":', json_string(cut_utf8(id, 128)),
        ',"time":"', rfc3339_ms(t0), '"',
        ',"api_key_id":', json_string(key),
    }
    local n = #f
    local function add(name, value)
        f[n + 1], f[n + 2], f[n + 3] = ',"', name, '":'
        f[n + 4] = value
        n = n + 4
    end
    local customer = var(txn, "customer")
    if customer then
        add("customer_id", json_string(customer))
    end
    if gateway ~= "" then
        add("gateway", json_string(gateway))
    end
    local method = var(txn, "method")
    if method and find(method, "^%a+$") and #method <= 16 then
        add("method", json_string(method))
    end
    local route = var(txn, "route") or var(txn, "path")
    if route then
        add("route", json_string(clean_route(route)))
    end
    add("status", fmt("%d", status))
    add("latency_ms", fmt("%d", math.max(now - t0, 0)))
    local rb = var(txn, "req_bytes")
    if rb and find(rb, "^%d+$") and #rb <= 18 then
        add("request_bytes", rb)
    end
    local sb = var(txn, "resp_bytes")
    if sb and find(sb, "^%d+$") and #sb <= 18 then
        add("response_bytes", sb)
    end
    local ip = txn.f:src()
    if ip and ip ~= "" then
        add("client_ip", json_string(tostring(ip)))
    end
    local ua = var(txn, "ua")
    if ua then
        add("user_agent", json_string(cut_utf8(ua, MAX_UA_BYTES)))
    end
    local units = var(txn, "units")
    if units then
        add("units", units_json(units))
    end
    f[n + 1] = "}"
    return concat(f)
end

-- lua.meterline_event: meters the transaction. Use it in
-- `http-after-response set-var(txn.meterline) lua.meterline_event`, which
-- runs for every response, HAProxy's own included. It never fails the
-- request; it answers what it did: queued, dropped (queue full), unmetered
-- (no key) or an error.
core.register_fetches("meterline_event", function(txn)
    local ok, ev, why = pcall(event, txn)
    if not ok then
        core.Warning("meterline: building the event failed: " .. tostring(ev))
        return "error"
    end
    if not ev then
        return why
    end
    if held >= conf.queue_size then
        stats.queue_full = stats.queue_full + 1
        return "dropped"
    end
    tail = tail + 1
    q[tail], qt[tail] = ev, now_ms()
    held = held + 1
    stats.enqueued = stats.enqueued + 1
    return "queued"
end)

-- take removes up to batch_size events from the queue.
local function take()
    local lines = {}
    while head <= tail and #lines < conf.batch_size do
        lines[#lines + 1] = q[head]
        q[head], qt[head] = nil, nil
        head = head + 1
    end
    return lines
end

local function backoff(attempt)
    local ceil = math.min(10000, 100 * 2 ^ math.min(attempt, 20))
    return floor(100 + math.random() * (ceil - 100))
end

local function header(r, name)
    local h = r.headers and r.headers[name]
    if type(h) == "table" then
        return h[0] or h[1]
    end
    return h
end

-- retry_after reads a Retry-After of delay seconds (the collector's form),
-- capped at 5 minutes.
local function retry_after(r)
    local v = header(r, "retry-after")
    local s = v and tonumber(v)
    if not s or s < 0 then
        return 0
    end
    return math.min(s, 300) * 1000
end

-- accepted counts a 202 answer and logs its first rejections.
local function accepted(body, n)
    body = body or ""
    local a = tonumber(string.match(body, '"accepted"%s*:%s*(%d+)'))
    local _, rejected = gsub(body, '"index"%s*:', "")
    if not a then
        a = n - rejected
    end
    stats.sent = stats.sent + a
    stats.rejected = stats.rejected + rejected
    local logged = 0
    for idx, err in string.gmatch(body, '"index"%s*:%s*(%d+)%s*,%s*"error"%s*:%s*"(.-)"%s*}') do
        if logged == MAX_LOGGED_REJECTIONS then
            core.Warning(fmt("meterline: %d more events rejected by the collector (not logged one by one)", rejected - logged))
            break
        end
        core.Warning(fmt("meterline: event %s of a batch rejected by the collector: %s", idx, (gsub(err, '\\"', '"'))))
        logged = logged + 1
    end
end

-- post sends lines until the collector answers, retrying as described at
-- the top.
local function post(lines)
    local n = #lines
    local body = concat(lines, "\n") .. "\n"
    local deadline = now_ms() + conf.max_retry_ms
    local attempt = 0
    while true do
        local hc = core.httpclient()
        local ok, r = pcall(hc.post, hc, { url = conf.url, body = body, headers = headers, timeout = conf.timeout_ms })
        local status = (ok and type(r) == "table" and tonumber(r.status)) or 0
        if status == 202 then
            accepted(r.body, n)
            return
        end
        if status == 413 and n > 1 then
            core.Info(fmt("meterline: the collector refused a batch of %d events as too large; sending it in halves", n))
            local half = floor(n / 2)
            post({ table.unpack(lines, 1, half) })
            post({ table.unpack(lines, half + 1, n) })
            return
        end
        if status >= 400 and status < 500 and status ~= 429 then
            stats.refused = stats.refused + n
            core.Alert(fmt("meterline: the collector refused a batch (status %d: %s); its %d events are dropped",
                status, sub(tostring(r.body or ""), 1, 300), n))
            return
        end
        local wait = math.max(backoff(attempt), ok and type(r) == "table" and retry_after(r) or 0)
        if now_ms() + wait > deadline then
            stats.retries_exhausted = stats.retries_exhausted + n
            core.Alert(fmt("meterline: collector unreachable (status %d%s); %d events dropped after %d attempts",
                status, ok and "" or (", " .. tostring(r)), n, attempt + 1))
            return
        end
        core.msleep(wait)
        attempt = attempt + 1
        stats.retries = stats.retries + 1
    end
end

-- The sender: posts a batch when batch_size events are queued, when the
-- oldest has waited flush_ms, or at once while HAProxy is stopping.
core.register_task(function()
    local stopping, checked = false, 0
    while true do
        local now = now_ms()
        if not stopping and now - checked >= 100 then
            checked = now
            stopping = tonumber(core.get_info().Stopping) == 1
            if stopping and head <= tail then
                core.Info(fmt("meterline: stopping; sending the %d queued events now", tail - head + 1))
            end
        end
        local queued = tail - head + 1
        if queued > 0 and (queued >= conf.batch_size or stopping or now - qt[head] >= conf.flush_ms) then
            local lines = take()
            local ok, err = pcall(post, lines)
            if not ok then
                core.Alert("meterline: sending a batch failed: " .. tostring(err))
                stats.retries_exhausted = stats.retries_exhausted + #lines
            end
            held = held - #lines
        else
            core.msleep(stopping and 10 or 50)
        end
    end
end)

-- lua.meterline_metrics: the counters in Prometheus' text format, for a
-- `http-request use-service lua.meterline_metrics` on a private listener.
core.register_service("meterline_metrics", "http", function(applet)
    local b = {
        "# HELP meterline_client_events_enqueued_total Events queued for sending to the Meterline collector.",
        "# TYPE meterline_client_events_enqueued_total counter",
        "meterline_client_events_enqueued_total " .. stats.enqueued,
        "# HELP meterline_client_events_sent_total Events the collector accepted.",
        "# TYPE meterline_client_events_sent_total counter",
        "meterline_client_events_sent_total " .. stats.sent,
        "# HELP meterline_client_events_rejected_total Events refused one by one for an invalid field (logged, not retried).",
        "# TYPE meterline_client_events_rejected_total counter",
        "meterline_client_events_rejected_total " .. stats.rejected,
        "# HELP meterline_client_retries_total Repeated POSTs of a batch after a network error, 429 or 5xx.",
        "# TYPE meterline_client_retries_total counter",
        "meterline_client_retries_total " .. stats.retries,
        "# HELP meterline_client_events_dropped_total Events not sent: queue_full, refused (a 4xx for the whole batch), retries_exhausted.",
        "# TYPE meterline_client_events_dropped_total counter",
        'meterline_client_events_dropped_total{reason="queue_full"} ' .. stats.queue_full,
        'meterline_client_events_dropped_total{reason="refused"} ' .. stats.refused,
        'meterline_client_events_dropped_total{reason="retries_exhausted"} ' .. stats.retries_exhausted,
        "# HELP meterline_client_queue_depth Events held: queued, or in a batch being sent.",
        "# TYPE meterline_client_queue_depth gauge",
        "meterline_client_queue_depth " .. held,
        "# HELP meterline_client_queue_capacity Events the queue holds when full (METERLINE_QUEUE_SIZE).",
        "# TYPE meterline_client_queue_capacity gauge",
        "meterline_client_queue_capacity " .. conf.queue_size,
        "",
    }
    local text = concat(b, "\n")
    applet:set_status(200)
    applet:add_header("content-type", "text/plain; version=0.0.4")
    applet:add_header("content-length", tostring(#text))
    applet:start_response()
    applet:send(text)
end)
