-- meterline_limits: Meterline's plan limits enforced by nginx, in front of
-- the upstream: per-key rate limits (sliding windows in a shared dict, shared
-- by every worker), the plan's monthly hard limit and the key's status
-- (disabled, expired, not yet valid), from a copy of Meterline's
-- GET /v1/limits?since= that one worker refreshes on a timer. See
-- meterline.conf.tmpl for the wiring:
--
--   lua_shared_dict meterline_limits 32m;   # key states
--   lua_shared_dict meterline_rate 32m;     # rate windows
--   init_worker_by_lua_block { require("meterline_limits").init({ endpoint = "http://meterline:8080", token = "..." }) }
--   access_by_lua_block      { require("meterline_limits").access() }
--
-- Refusals: 429 over a rate limit (Retry-After, and the IETF draft's
-- RateLimit-Policy and RateLimit headers) or over the hard limit (Retry-After
-- until the first of the next month, UTC); 403 for a key that is disabled,
-- expired or not yet valid; 503 while the copy is stale and fail_mode is
-- "closed". The body is JSON: {"error", "reason", "retry_after_seconds"}.
-- meterline_event.log() then meters the refused request with the property
-- "rejected" (the reason) and 0 units, unless the plan bills refused
-- requests (bill_rejected).
--
-- Memory is bounded by the two dicts' sizes: nginx evicts the least
-- recently used entries of a full dict (a rate window evicted early forgets
-- its count; give meterline_rate about 100 bytes per key and rate limit).

local cjson = require "cjson.safe"

local ngx = ngx
local var = ngx.var
local byte, concat, find, fmt, match, sub = string.byte, table.concat, string.find, string.format, string.match, string.sub
local floor, tonumber, tostring = math.floor, tonumber, tostring

local _M = { _VERSION = "1" }

local conf -- set by init in each worker

local MAX_ANSWER_BYTES = 64 * 1024 * 1024
local MAX_PAGES = 10000

-- days_from_civil: days since 1970-01-01 of a proleptic Gregorian date.
local function days_from_civil(y, m, d)
    if m <= 2 then y = y - 1 end
    local era = floor(y / 400)
    local yoe = y - era * 400
    local mp = (m + 9) % 12
    local doy = floor((153 * mp + 2) / 5) + d - 1
    local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
    return era * 146097 + doe - 719468
end

-- parse_time reads an RFC 3339 time as Meterline writes it; nil if absent.
local function parse_time(s)
    if type(s) ~= "string" then
        return nil
    end
    local y, mo, d, h, mi, se, frac, zone = match(s, "^(%d%d%d%d)-(%d%d)-(%d%d)T(%d%d):(%d%d):(%d%d)(%.?%d*)(.*)$")
    if not y then
        return nil, "not an RFC 3339 time: " .. s
    end
    local t = days_from_civil(tonumber(y), tonumber(mo), tonumber(d)) * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60 + tonumber(se)
    if frac ~= "" and frac ~= "." then
        t = t + tonumber("0" .. frac)
    end
    if zone ~= "Z" then
        local sign, zh, zm = match(zone, "^([+-])(%d%d):(%d%d)$")
        if not sign then
            return nil, "not an RFC 3339 time: " .. s
        end
        local off = tonumber(zh) * 3600 + tonumber(zm) * 60
        if sign == "+" then t = t - off else t = t + off end
    end
    return t
end

-- parse_duration reads Go durations as the catalogue writes windows: 1s,
-- 1m, 1h, 1h30m, 1.5s, 500ms.
local units = { h = 3600, m = 60, s = 1, ms = 0.001 }
local function parse_duration(s)
    if type(s) ~= "string" or s == "" or #s > 32 then
        return nil
    end
    local total, rest = 0, s
    while rest ~= "" do
        local num, unit, tail = match(rest, "^(%d+%.?%d*)(ms)(.*)$")
        if not num then
            num, unit, tail = match(rest, "^(%d+%.?%d*)([hms])(.*)$")
        end
        if not num then
            return nil
        end
        total = total + tonumber(num) * units[unit]
        rest = tail
    end
    return total
end

-- encode_state packs what access() needs into one dict value:
-- status|not_before|expires_at|over_hard|bill|name:per:requests,...
local function encode_state(k)
    local nb, err = parse_time(k.not_before)
    if err then return nil, err end
    local exp, err2 = parse_time(k.expires_at)
    if err2 then return nil, err2 end
    local rls = {}
    if type(k.rate_limits) == "table" then
        if #k.rate_limits > 8 then
            return nil, "more than 8 rate limits"
        end
        for i, rl in ipairs(k.rate_limits) do
            local per = parse_duration(rl.per)
            local req = tonumber(rl.requests)
            if not per or per < 1 or not req or req < 1 or req ~= floor(req) or find(rl.per, "[:,|]") then
                return nil, "rate limit " .. tostring(rl.per) .. " " .. tostring(rl.requests) .. " is not a window of 1s or more and a positive count"
            end
            rls[i] = rl.per .. ":" .. fmt("%.17g", per) .. ":" .. fmt("%d", req)
        end
    end
    local status = k.status
    if type(status) ~= "string" or find(status, "|") then
        return nil, "bad status"
    end
    return concat({ status, nb and fmt("%.3f", nb) or "", exp and fmt("%.3f", exp) or "",
        k.over_hard_limit == true and "1" or "0", k.bill_rejected == true and "1" or "0", concat(rls, ",") }, "|")
end

local function decode_state(v)
    local status, nb, exp, over, bill, rls = match(v, "^([^|]*)|([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$")
    if not status then
        return nil
    end
    local st = { status = status, not_before = tonumber(nb), expires_at = tonumber(exp), over = over == "1", bill = bill == "1", limits = {} }
    for name, per, req in string.gmatch(rls, "([^:,]+):([^:,]+):([^:,]+)") do
        st.limits[#st.limits + 1] = { name = name, per = tonumber(per), requests = tonumber(req) }
    end
    return st
end

-- http_get fetches url (http:// or https://host[:port]/path) with the
-- token, over a cosocket, as HTTP/1.0 (the body ends when the connection
-- does). Returns status, body or nil, err.
local function http_get(u, token, timeout_ms)
    local scheme, host, port, path = match(u, "^(https?)://([^/:]+):?(%d*)(/.*)$")
    if not scheme then
        return nil, "endpoint " .. u .. " is not http(s)://host[:port]/path"
    end
    port = tonumber(port) or (scheme == "https" and 443 or 80)
    local sock = ngx.socket.tcp()
    sock:settimeout(timeout_ms)
    local ok, err = sock:connect(host, port)
    if not ok then
        return nil, "connect " .. host .. ":" .. port .. ": " .. tostring(err)
    end
    if scheme == "https" then
        ok, err = sock:sslhandshake(nil, host, true)
        if not ok then
            sock:close()
            return nil, "TLS " .. host .. ": " .. tostring(err)
        end
    end
    local req = { "GET ", path, " HTTP/1.0\r\nHost: ", host, "\r\nAccept: application/json\r\n" }
    if token and token ~= "" then
        req[#req + 1] = "Authorization: Bearer " .. token .. "\r\n"
    end
    req[#req + 1] = "\r\n"
    ok, err = sock:send(concat(req))
    if not ok then
        sock:close()
        return nil, "send: " .. tostring(err)
    end
    local chunks, size = {}, 0
    while true do
        local data, rerr = sock:receiveany(1024 * 1024)
        if not data then
            if rerr == "closed" then
                break
            end
            sock:close()
            return nil, "receive: " .. tostring(rerr)
        end
        size = size + #data
        if size > MAX_ANSWER_BYTES then
            sock:close()
            return nil, "answer larger than " .. MAX_ANSWER_BYTES .. " bytes"
        end
        chunks[#chunks + 1] = data
    end
    sock:close()
    local raw = concat(chunks)
    local code = tonumber(match(raw, "^HTTP/%d%.%d (%d%d%d)"))
    local hend = find(raw, "\r\n\r\n", 1, true)
    if not code or not hend then
        return nil, "not an HTTP answer"
    end
    return code, sub(raw, hend + 4)
end

-- poll fetches every page of changes since the last version and applies
-- them at once: a bad page leaves the copy as it was.
local function poll()
    local states = ngx.shared.meterline_limits
    local since = states:get("meta:version") or ""
    local sets, reset, asof = {}, false, nil
    local version
    for _ = 1, MAX_PAGES do
        local started = ngx.now()
        local code, body = http_get(conf.endpoint .. "/v1/limits?limit=" .. conf.page_size .. "&since=" .. ngx.escape_uri(since), conf.token, conf.timeout_ms)
        if not code then
            return nil, body
        end
        if code ~= 200 then
            return nil, "GET /v1/limits: HTTP " .. code .. ": " .. sub(body, 1, 200)
        end
        local page = cjson.decode(body)
        if type(page) ~= "table" or type(page.version) ~= "string" or type(page.keys) ~= "table" then
            return nil, "GET /v1/limits: not a limits answer"
        end
        if page.reset == true or since == "" then
            reset = true
        end
        for _, k in ipairs(page.keys) do
            local id = k.api_key_id
            if type(id) ~= "string" or id == "" or #id > 128 then
                return nil, "GET /v1/limits: a key without a valid api_key_id"
            end
            if k.status == "unknown" then
                sets[id] = false
            else
                local v, err = encode_state(k)
                if not v then
                    return nil, "GET /v1/limits: key " .. id .. ": " .. err
                end
                sets[id] = v
            end
        end
        if not asof then
            asof = started - (tonumber(page.staleness_seconds) or 0)
        end
        since, version = page.version, page.version
        if page.more ~= true then
            break
        end
    end
    if reset then
        states:flush_all()
    end
    for id, v in pairs(sets) do
        if v then
            local ok, err, forcible = states:set("k:" .. id, v)
            if not ok then
                return nil, "meterline_limits dict: " .. tostring(err)
            end
            if forcible then
                ngx.log(ngx.WARN, "meterline: lua_shared_dict meterline_limits is full: older key states were evicted")
            end
        else
            states:delete("k:" .. id)
        end
    end
    states:set("meta:version", version)
    states:set("meta:asof", asof)
    return true
end

local function poll_timer(premature)
    if premature then
        return
    end
    local ok, err = poll()
    local failing = conf.failing
    if not ok then
        if not failing then
            ngx.log(ngx.WARN, "meterline: fetching limits failed (the last states stay in force until they are ",
                conf.max_staleness, " s old, then fail_mode ", conf.fail_mode, " applies): ", err)
        end
        conf.failing = true
    elseif failing then
        ngx.log(ngx.NOTICE, "meterline: fetching limits again")
        conf.failing = false
    end
end

-- init reads the options in every worker and starts the poller in worker 0.
-- Options:
--   endpoint       Meterline's base URL, http(s)://host:port (a process with
--                  the query role); "" turns enforcement off
--   token          a bearer token with the ingest scope
--   poll_interval  seconds between fetches (default 5)
--   max_staleness  seconds: beyond this age of the copy fail_mode applies
--                  (default 60; more than poll_interval)
--   fail_mode      "open" (default: the last states stay, unknown keys pass)
--                  or "closed" (503 for every request with a key)
--   unknown_keys   "allow" (default) or "deny" (403)
--   api_key_var    nginx variable holding the key (default
--                  "http_x_api_key_id", the X-Api-Key-Id header)
--   page_size      keys per GET (default 1000)
--   timeout        seconds for one GET (default 10)
function _M.init(opts)
    opts = opts or {}
    conf = {
        endpoint = (opts.endpoint or ""):gsub("/+$", ""),
        token = opts.token,
        poll_interval = tonumber(opts.poll_interval) or 5,
        max_staleness = tonumber(opts.max_staleness) or 60,
        fail_mode = opts.fail_mode or "open",
        unknown_keys = opts.unknown_keys or "allow",
        api_key_var = opts.api_key_var or "http_x_api_key_id",
        page_size = tonumber(opts.page_size) or 1000,
        timeout_ms = (tonumber(opts.timeout) or 10) * 1000,
    }
    if conf.endpoint == "" then
        conf.off = true
        return
    end
    if conf.fail_mode ~= "open" and conf.fail_mode ~= "closed" then
        error("meterline: fail_mode must be \"open\" or \"closed\"")
    end
    if conf.unknown_keys ~= "allow" and conf.unknown_keys ~= "deny" then
        error("meterline: unknown_keys must be \"allow\" or \"deny\"")
    end
    if conf.poll_interval < 0.01 or conf.max_staleness <= conf.poll_interval then
        error("meterline: poll_interval must be at least 0.01 s and max_staleness more than it")
    end
    if conf.page_size < 1 or conf.page_size > 10000 then
        error("meterline: page_size must be 1-10000")
    end
    if not ngx.shared.meterline_limits or not ngx.shared.meterline_rate then
        error("meterline: declare lua_shared_dict meterline_limits and meterline_rate in http {}")
    end
    if ngx.worker.id() == 0 then
        local ok, err = ngx.timer.at(0, poll_timer)
        if ok then
            ok, err = ngx.timer.every(conf.poll_interval, poll_timer)
        end
        if not ok then
            error("meterline: cannot start the limits timer: " .. tostring(err))
        end
    end
end

-- refuse answers the request and marks it for meterline_event.
local function refuse(code, reason, msg, retry_after, bill)
    ngx.ctx.meterline_rejected = reason
    ngx.ctx.meterline_bill_rejected = bill
    ngx.status = code
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Cache-Control"] = "no-store"
    local ra = ""
    if retry_after and retry_after > 0 then
        ngx.header["Retry-After"] = fmt("%d", retry_after)
        ra = fmt(',"retry_after_seconds":%d', retry_after)
    end
    ngx.say('{"error":"', msg, '","reason":"', reason, '"', ra, '}')
    return ngx.exit(code)
end

local function ceil_s(x)
    local s = floor(x)
    if s < x then s = s + 1 end
    if s < 1 then s = 1 end
    return s
end

-- take counts one request of key against its rate limits. Every window is
-- incremented first and checked after (atomic in the dict, so workers
-- racing each other never let more through than the limit); when one
-- would be exceeded the increments are taken back. Returns ok, index of
-- the deciding limit, remaining, reset seconds.
local function take(key, limits, now)
    local rate = ngx.shared.meterline_rate
    local taken = {}
    local worst, worst_wait, best, best_rem, best_reset = nil, -1, 1, math.huge, 1
    for i, rl in ipairs(limits) do
        local per = rl.per
        local idx = floor(now / per)
        local frac = (now - idx * per) / per
        local base = "w:" .. key .. ":" .. rl.name .. ":"
        local cur, err = rate:incr(base .. idx, 1, 0, ceil_s(2 * per + 1))
        if not cur then
            ngx.log(ngx.WARN, "meterline: meterline_rate dict: ", err)
            cur = 1
        else
            taken[#taken + 1] = base .. idx
        end
        local prev = rate:get(base .. (idx - 1)) or 0
        local est = prev * (1 - frac) + cur - 1 -- before this request
        local L = rl.requests
        if est >= L then
            local wait
            if cur - 1 < L and prev > 0 then
                wait = ((1 - (L - (cur - 1)) / prev) - frac) * per
            else
                local g = 0
                if cur - 1 > 0 then g = math.max(0, 1 - L / (cur - 1)) end
                wait = (1 - frac) * per + g * per
            end
            wait = wait + 0.001
            if wait > worst_wait then
                worst, worst_wait = i, wait
            end
        else
            local rem = floor(L - est) - 1
            if rem < 0 then rem = 0 end
            if rem < best_rem then
                best, best_rem, best_reset = i, rem, ceil_s((1 - frac) * per)
            end
        end
    end
    if worst then
        for _, k in ipairs(taken) do
            rate:incr(k, -1)
        end
        return false, worst, 0, ceil_s(worst_wait)
    end
    return true, best, best_rem, best_reset
end

local function policy(limits)
    local p = {}
    for i, rl in ipairs(limits) do
        p[i] = fmt('"%s";q=%d;w=%d', rl.name, rl.requests, floor(rl.per))
    end
    return concat(p, ", ")
end

-- access enforces the limits; call it from access_by_lua_block.
function _M.access()
    if not conf or conf.off then
        return
    end
    local key = var[conf.api_key_var]
    if not key or key == "" then
        return
    end
    local states = ngx.shared.meterline_limits
    local now = ngx.now()
    local asof = states:get("meta:asof")
    local fresh = asof and now - asof <= conf.max_staleness
    if not fresh and conf.fail_mode == "closed" then
        return refuse(503, "limits_unavailable", "usage limits cannot be checked now", ceil_s(conf.poll_interval), false)
    end
    local v = states:get("k:" .. key)
    local st = v and decode_state(v)
    if not st then
        if fresh and conf.unknown_keys == "deny" then
            return refuse(403, "key_unknown", "unknown API key", nil, false)
        end
        return
    end
    local status = "active"
    if st.status == "disabled" then
        status = "disabled"
    elseif st.not_before and now < st.not_before then
        status = "not_yet_valid"
    elseif st.expires_at and now >= st.expires_at then
        status = "expired"
    end
    if status ~= "active" then
        local msgs = { disabled = "this API key is disabled", expired = "this API key has expired", not_yet_valid = "this API key is not valid yet" }
        return refuse(403, "key_" .. status, msgs[status], nil, st.bill)
    end
    if st.over then
        local y, m = tonumber(os.date("!%Y", now)), tonumber(os.date("!%m", now))
        if m == 12 then y, m = y + 1, 1 else m = m + 1 end
        local reset = days_from_civil(y, m, 1) * 86400
        return refuse(429, "hard_limit", "the plan's monthly limit is reached", ceil_s(reset - now), st.bill)
    end
    if #st.limits > 0 then
        local ok, i, rem, reset = take(key, st.limits, now)
        local rl = st.limits[i]
        ngx.header["RateLimit-Policy"] = policy(st.limits)
        ngx.header["RateLimit"] = fmt('"%s";r=%d;t=%d', rl.name, rem, reset)
        if not ok then
            return refuse(429, "rate_limit:" .. rl.name, fmt("rate limit of %d requests per %s exceeded", rl.requests, rl.name), reset, st.bill)
        end
    end
end

-- rejected returns the reason access() refused the current request and
-- whether its plan bills it, for meterline_event.
function _M.rejected()
    return ngx.ctx.meterline_rejected, ngx.ctx.meterline_bill_rejected
end

return _M
