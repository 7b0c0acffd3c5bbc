-- wrk script: POST one JSON body file on every connection and check every response.
-- Usage: wrk -t1 -c8 -d10s --latency -s bench/post.lua URL -- BODY_FILE
-- A response counts as good when it is HTTP 200 and its body holds a "cards" array. The last line of the
-- output is "WRK_JSON {...}" with the totals and latency percentiles (microseconds), read by bench/run.py.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local file = assert(io.open(args[1], "rb"))
  wrk.method = "POST"
  wrk.body = file:read("*a")
  file:close()
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Accept"] = "application/json"
  good = 0
  bad = 0
  non200 = 0
end

function response(status, headers, body)
  if status == 200 and body ~= nil and string.find(body, '"cards":[', 1, true) then
    good = good + 1
  else
    bad = bad + 1
    if status ~= 200 then
      non200 = non200 + 1
    end
  end
end

function done(summary, latency, requests)
  local good_total, bad_total, non200_total = 0, 0, 0
  for _, thread in ipairs(threads) do
    good_total = good_total + thread:get("good")
    bad_total = bad_total + thread:get("bad")
    non200_total = non200_total + thread:get("non200")
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"good":%d,"bad":%d,"non200":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"stdev":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes, good_total, bad_total, non200_total,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
