-- meterline_event: one Meterline v1 request event per proxied request,
-- produced straight to the events topic by lua-nginx-kafka's async producer
-- (Debian: lua-nginx-kafka). See meterline.conf.tmpl for the wiring:
--
--   init_worker_by_lua_block { require("meterline_event").init({ brokers = "h:9092", topic = "requests", gateway = "edge-1" }) }
--   log_by_lua_block         { require("meterline_event").log() }
--
-- The event (schemas/event.schema.json):
--   id             $request_id
--   time           request start, RFC 3339 UTC with milliseconds
--   api_key_id     the X-Api-Key-Id request header (option api_key_var);
--                  a request without it is not metered
--   gateway        option gateway
--   method         the request method (left out if it is not 1-16 letters)
--   route          the upstream's X-Route response header (the endpoint
--                  template), else the request path ($uri)
--   status         $status
--   latency_ms     $request_time in milliseconds
--   request_bytes  the request body's size ($content_length; absent for a
--                  chunked upload, which declares none)
--   response_bytes the response body's size ($body_bytes_sent)
--   client_ip      $remote_addr (Meterline anonymises it at ingest)
--   user_agent     User-Agent, cut to 512 bytes on a UTF-8 boundary
--   units          the upstream's X-Units response header, else absent (1);
--                  0 for a request meterline_limits refused, unless its
--                  plan bills refused requests
--   properties     {"rejected": reason} for a request meterline_limits
--                  refused (rate_limit:1s, hard_limit, key_expired, ...)
-- The message key is api_key_id, the value the JSON.
--
-- Values the gateway cannot vouch for (api_key_id, X-Units) are passed as
-- they are: an invalid one lands in Meterline's dead-letter topic with the
-- reason, rather than being billed as a guess or dropped here unseen.
--
-- The JSON is written by hand, not with lua-cjson: the event is a flat object
-- of known fields, and cjson prints numbers with 14 significant digits, which
-- would round units such as 123456789.123456.

local producer = require "nginx.kafka.producer"

local ngx = ngx
local var = ngx.var
local byte, concat, find, fmt, gsub, sub = string.byte, table.concat, string.find, string.format, string.gsub, string.sub
local floor, tonumber, tostring = math.floor, tonumber, tostring

local _M = { _VERSION = "1" }

local conf -- set by init in each worker
local p    -- the worker's async producer

local MAX_ROUTE_BYTES = 1024
local MAX_UA_BYTES = 512

-- parse_brokers turns "host:port,host:port" into lua-nginx-kafka's broker list.
local function parse_brokers(s)
    local list = {}
    for item in string.gmatch(s, "[^,%s]+") do
        local host, port = string.match(item, "^%[?([^%]]+)%]?:(%d+)$")
        if not host then
            error("meterline: broker " .. item .. " is not host:port")
        end
        list[#list + 1] = { host = host, port = tonumber(port) }
    end
    if #list == 0 then
        error("meterline: no Kafka broker given")
    end
    return list
end

-- init creates this worker's producer. Options:
--   brokers      "host:port[,host:port]" (required; a host name needs a
--                `resolver` directive in nginx.conf)
--   topic        events topic (default "requests")
--   gateway      gateway name stored with each event (default: none)
--   api_key_var  nginx variable holding the API key's public id
--                (default "http_x_api_key_id", the X-Api-Key-Id header)
--   producer     options passed to lua-nginx-kafka's producer:new, over
--                these defaults: producer_type "async", api_version 2
--                (Produce v2: the message carries a timestamp),
--                required_acks -1, flush_time 1000 ms, batch_num 200,
--                max_buffering 50000 (events buffered per worker),
--                max_retry 60 and retry_backoff 500 ms: a batch is retried
--                for about 30 s before it is dropped (and logged). The
--                library's own 3 and 100 ms lose events when a broker
--                restarts; a retried event that had in fact arrived is
--                stored once, as Meterline deduplicates on id.
function _M.init(opts)
    local gateway = opts.gateway
    if gateway == "" then
        gateway = nil
    end
    if gateway and (#gateway > 128 or find(gateway, "[%c\128-\255]")) then
        error("meterline: gateway must be at most 128 printable ASCII characters")
    end
    conf = {
        topic = opts.topic or "requests",
        gateway = gateway,
        api_key_var = opts.api_key_var or "http_x_api_key_id",
    }
    local popts = {
        producer_type = "async",
        api_version = 2,
        required_acks = -1,
        flush_time = 1000,
        batch_num = 200,
        max_buffering = 50000,
        max_retry = 60,
        retry_backoff = 500,
        error_handle = function(topic, partition_id, queue, index, err, retryable)
            ngx.log(ngx.ERR, "meterline: ", index / 2, " events for ", topic, "/", partition_id,
                " were dropped after retries: ", err, " (retryable: ", tostring(retryable), ")")
        end,
    }
    for k, v in pairs(opts.producer or {}) do
        popts[k] = v
    end
    p = producer:new(parse_brokers(opts.brokers or ""), popts)
end

-- json_string quotes s as a JSON string. Bytes >= 0x80 pass through: the
-- sink checks UTF-8 itself.
local escapes = { ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }
local function json_string(s)
    return '"' .. gsub(s, '[%c"\\]', function(c)
        return escapes[c] or fmt("\\u%04x", byte(c))
    end) .. '"'
end

-- clean_route percent-encodes control characters and bytes >= 0x80 (the
-- contract wants printable UTF-8, and a raw path may hold anything once
-- decoded) and cuts the result to 1024 bytes.
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

-- units_json renders the X-Units header: a plain decimal is copied as it is
-- (without leading zeros), anything else is sent as a string so the sink
-- dead-letters the event naming the field.
local function units_json(s)
    if find(s, "^%d+$") or find(s, "^%d+%.%d+$") then
        return (gsub(s, "^0+(%d)", "%1"))
    end
    return json_string(s)
end

local function rfc3339_ms(t)
    local ms = floor(t * 1000 + 0.5)
    local sec = floor(ms / 1000)
    return os.date("!%Y-%m-%dT%H:%M:%S", sec) .. fmt(".%03dZ", ms - sec * 1000)
end

-- event returns the api key and the JSON event of the current request, or
-- nil when it is not metered.
local function event()
    local key = var[conf.api_key_var]
    if not key or key == "" then
        return nil
    end
    local status = ngx.status
    if not status or status < 100 or status > 599 then
        -- nginx logs 0 for a request that never got a status (rare)
        ngx.log(ngx.WARN, "meterline: request ", var.request_id, " has no HTTP status; not metered")
        return nil
    end
    local f = {
        '{"id":', json_string(var.request_id),
        ',"time":"', rfc3339_ms(ngx.req.start_time()), '"',
        ',"api_key_id":', json_string(key),
    }
    local n = #f
    local function add(name, value)
        f[n + 1], f[n + 2], f[n + 3] = ',"', name, '":'
        f[n + 4] = value
        n = n + 4
    end
    if conf.gateway then
        add("gateway", json_string(conf.gateway))
    end
    local method = ngx.req.get_method()
    if method and find(method, "^%a+$") and #method <= 16 then
        add("method", json_string(method))
    end
    local route = var.upstream_http_x_route
    if not route or route == "" then
        route = var.uri
    end
    if route and route ~= "" then
        add("route", json_string(clean_route(route)))
    end
    add("status", fmt("%d", status))
    local rt = tonumber(var.request_time)
    if rt and rt >= 0 then
        add("latency_ms", fmt("%d", floor(rt * 1000 + 0.5)))
    end
    local rb = var.content_length
    if rb and find(rb, "^%d+$") then
        add("request_bytes", rb)
    end
    local sb = var.body_bytes_sent
    if sb and find(sb, "^%d+$") then
        add("response_bytes", sb)
    end
    local ip = var.remote_addr
    if ip and ip ~= "" and sub(ip, 1, 5) ~= "unix:" then
        add("client_ip", json_string(ip))
    end
    local ua = var.http_user_agent
    if ua and ua ~= "" then
        add("user_agent", json_string(cut_utf8(ua, MAX_UA_BYTES)))
    end
    -- A request meterline_limits refused: its reason as a property, and
    -- 0 units unless the plan bills refused requests.
    local rejected, bill = ngx.ctx.meterline_rejected, ngx.ctx.meterline_bill_rejected
    if rejected then
        add("properties", '{"rejected":' .. json_string(rejected) .. '}')
    end
    local units = var.upstream_http_x_units
    if rejected and not bill then
        add("units", "0")
    elseif units and units ~= "" then
        add("units", units_json(units))
    end
    f[n + 1] = "}"
    return key, concat(f)
end

-- log meters the current request; call it from log_by_lua_block. It never
-- fails the request: errors are logged.
function _M.log()
    if not p then
        ngx.log(ngx.ERR, "meterline: init was not called in init_worker_by_lua_block")
        return
    end
    local ok, key, value = pcall(event)
    if not ok then
        ngx.log(ngx.ERR, "meterline: building the event of request ", var.request_id, ": ", key)
        return
    end
    if not key then
        return
    end
    local sent, err = p:send(conf.topic, key, value)
    if not sent then
        ngx.log(ngx.ERR, "meterline: event of request ", var.request_id, " dropped: ", err)
    end
end

return _M
