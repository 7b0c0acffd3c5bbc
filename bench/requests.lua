-- wrk script: POST a different body on every request, cycling through a file of requests.
-- Usage: wrk -t1 -c8 -d10s --latency -s bench/requests.lua URL -- REQUESTS_FILE
-- REQUESTS_FILE holds one request a line: the path (e.g. /cds-services/tarlatamab-order-sign), a tab, and
-- the JSON body on one line. Requests are sent in file order (order-select before order-sign of the same
-- patient in the pair workload) and the file is cycled when it runs out. A response counts as good when it
-- is HTTP 200 and its body holds a "cards" array. The last line of the output is "WRK_JSON {...}" with the totals and
-- latency percentiles (microseconds), read by bench/run.py. A workload of one line repeats one body.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  paths = {}
  bodies = {}
  for line in io.lines(args[1]) do
    local tab = string.find(line, "\t", 1, true)
    if tab then
      table.insert(paths, string.sub(line, 1, tab - 1))
      table.insert(bodies, string.sub(line, tab + 1))
    end
  end
  assert(#bodies > 0, "no requests in " .. args[1])
  headers = {["Content-Type"] = "application/json", ["Accept"] = "application/json"}
  index = 0
  good = 0
  bad = 0
  non200 = 0
end

function request()
  index = index % #bodies + 1
  return wrk.format("POST", paths[index], headers, bodies[index])
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
