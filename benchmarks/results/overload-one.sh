# Sourced by the overload results scripts (run from the repository root, with OUT set): one overload run.
# one NAME REPO [overload args]: serve REPO on CPU 1 (serve --cpus 1) on random loopback ports, wait for
# readiness, run `python -m benchmarks overload` from CPU 0 (SLO p99 150 ms) into $OUT/retrieve-NAME.json,
# print its exit code, stop the server. Server log: $OUT/server-NAME.log.
one() {
  local name=$1 repo=$2; shift 2
  local port=$(( 18000 + RANDOM % 1000 ))
  .venv/bin/python -m model_repository serve --cpus 1 --repository "$repo" --grpc-port $port --http-port $((port+1)) \
      --metrics-port $((port+2)) --supervisor-metrics-port 0 --workdir /tmp/ovl-work-$name > $OUT/server-$name.log 2>&1 &
  local spid=$!
  for i in $(seq 120); do curl -sf localhost:$((port+1))/v2/health/ready >/dev/null && break; sleep 1; done
  .venv/bin/python -m benchmarks overload --grpc-url 127.0.0.1:$port --metrics-url http://127.0.0.1:$((port+2))/metrics \
      --slo-p99-ms 150 --generator-cpus 0 --out $OUT/retrieve-$name.json "$@" > $OUT/retrieve-$name.log 2>&1
  echo "rc=$? $name $(date +%T)"
  kill -INT $spid; wait $spid
}
