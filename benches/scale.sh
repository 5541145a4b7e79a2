#!/usr/bin/env bash
# The scale benchmark (issue 12): seeds CASES synthetic cases (default 1,000,000) with
# `countersign dev seed`, starts the real server (release build), waits for it to keep every
# past day's report figures, then drives it from separate `wrk` processes (Debian) on loopback
# at several concurrency levels: the queue, a case page, a search, GET /api/v1/cases, and the
# reports (13 and 52 weeks through the API, and the managers' page). Prints wrk's p50/p90/p99
# and requests/s, the server's idle RSS, and its peak RSS while it drains a backlog of
# BACKLOG sample emails (default 5,000) under 32 connections of load. It asserts nothing.
#
#   benches/scale.sh                                            # SQLite
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/countersign_scale benches/scale.sh
#   DATABASE_URL=postgres://... INSTANCES=2 benches/scale.sh   # two instances, one database
#
# Needs: wrk, python3, psql (for PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${CASES:-1000000}"
backlog="${BACKLOG:-5000}"
seconds="${SECONDS_EACH:-5}"
levels="${CONNECTIONS:-2 8 32}"
instances="${INSTANCES:-1}"
port="${PORT:-18090}"
work="$(mktemp -d /tmp/countersign-scale.XXXXXX)"
servers=()
stop_all() {
  for s in "${servers[@]:-}"; do kill "$s" 2>/dev/null || true; done
  for s in "${servers[@]:-}"; do wait "$s" 2>/dev/null || true; done
  rm -rf "$work" || true
}
trap stop_all EXIT

cargo build --release --quiet --bin countersign
bin="$PWD/target/release/countersign"
export COUNTERSIGN_DATA_DIR="$work/data"
export COUNTERSIGN_DROP_FOLDER="$work/data/inbox"
export COUNTERSIGN_MAIL_FOLDER="$work/data/sent-mail"
export COUNTERSIGN_DATABASE_URL="${DATABASE_URL:-sqlite://$work/data/countersign.db?mode=rwc}"
export COUNTERSIGN_WORKFLOWS_DIR="$PWD/workflows"
export COUNTERSIGN_TEMPLATES_DIR="$PWD/templates"
export COUNTERSIGN_LOG="${COUNTERSIGN_LOG:-info}"
export COUNTERSIGN_WEB_BASE_URL="http://127.0.0.1:$port"
mkdir -p "$work/data/inbox"
# SEED=0 reuses a PostgreSQL database seeded by an earlier run (say, to run it again with
# INSTANCES=2).
if [ "${SEED:-1}" = 1 ]; then
  if [[ "$COUNTERSIGN_DATABASE_URL" == postgres* ]]; then
    name="${COUNTERSIGN_DATABASE_URL##*/}"
    psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $name WITH (FORCE)" -c "CREATE DATABASE $name" postgres
  fi
  echo "== seeding $cases cases into ${COUNTERSIGN_DATABASE_URL%%\?*}"
  start=$(date +%s.%N)
  "$bin" dev seed --cases "$cases" >/dev/null
  echo "seeded in $(echo "$(date +%s.%N) - $start" | bc) s"
fi
run="$(date +%s)"
link="$("$bin" users add "load-$run@nhs.net" --role admin | grep -o 'http[^ ]*set-password/[^ ]*')"
token="$("$bin" tokens create --name "scale-$run" --role manager 2>/dev/null)"

start_server() {
  local n="$1" p=$((port + $1))
  COUNTERSIGN_WEB_BIND="127.0.0.1:$p" \
    "$bin" serve >"$work/serve-$n.log" 2>&1 &
  servers+=($!)
  for _ in $(seq 1 200); do curl -fs "http://127.0.0.1:$p/healthz" >/dev/null && break; sleep 0.1; done
}
start=$(date +%s.%N)
for n in $(seq 0 $((instances - 1))); do start_server "$n"; done
# Serving starts at once; the past days' report figures are kept in the background.
for _ in $(seq 1 600); do grep -q "kept the report figures" "$work/serve-0.log" && break; sleep 0.5; done
echo "report days kept $(echo "$(date +%s.%N) - $start" | bc) s after start"
sleep 2
echo "idle RSS: $(for s in "${servers[@]}"; do grep VmRSS /proc/$s/status | awk '{print $2/1024 " MiB"}'; done | paste -sd' ')"

cookie="$(python3 benches/sign_in.py "$link" "http://127.0.0.1:$port" "load-$run@nhs.net")"
reference="$(curl -fs -H "Authorization: Bearer $token" "http://127.0.0.1:$port/api/v1/cases" | python3 -c 'import json,sys; print(json.load(sys.stdin)["cases"][0]["reference"])')"
today="$(date +%F)"
year_ago="$(date -d '-364 days' +%F)"

# One wrk per instance, the connections shared between them; each prints its own figures.
drive() {
  local path="$1" header="$2" connections="$3"
  local per=$(( connections / instances )); [ "$per" -lt 1 ] && per=1
  local pids=()
  for n in $(seq 0 $((instances - 1))); do
    wrk -t"$(( per < 2 ? 1 : 2 ))" -c"$per" -d"${seconds}s" --latency --timeout 30s -H "$header" \
      "http://127.0.0.1:$((port + n))$path" >"$work/wrk-$n.txt" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"
  for n in $(seq 0 $((instances - 1))); do
    printf '  instance %s: %s\n' "$n" "$(grep -E '^\s+(50|90|99)%|Requests/sec|Non-2xx|Socket errors' "$work/wrk-$n.txt" | tr -s ' ' | paste -sd' ')"
  done
}

for path in "/" "/cases/$reference" "/?q=surgery" "/reports"; do
  for connections in $levels; do
    echo "== GET $path, $connections connections, ${seconds}s"
    drive "$path" "Cookie: $cookie" "$connections"
  done
done
for path in "/api/v1/cases" "/api/v1/reports" "/api/v1/reports?from=$year_ago&to=$today" "/api/v1/reports/dashboard"; do
  for connections in $levels; do
    echo "== GET $path (bearer token), $connections connections, ${seconds}s"
    drive "$path" "Authorization: Bearer $token" "$connections"
  done
done

echo "== draining $backlog sample emails while 32 connections read the queue"
# The peak is measured over the drain only (reports under load above have their own).
for s in "${servers[@]}"; do echo 5 >"/proc/$s/clear_refs" 2>/dev/null || true; done
"$bin" samples "$work/data/inbox" --count "$backlog" >/dev/null
start=$(date +%s.%N)
seconds=40 drive "/" "Cookie: $cookie" 32 &
load=$!
for _ in $(seq 1 1200); do
  left=$(find "$work/data/inbox" -maxdepth 1 -name '*.eml' | wc -l)
  [ "$left" -eq 0 ] && break
  sleep 0.5
done
echo "backlog drained in $(echo "$(date +%s.%N) - $start" | bc) s (files left: $left)"
wait "$load" || true
echo "peak RSS: $(for s in "${servers[@]}"; do grep VmHWM /proc/$s/status | awk '{print $2/1024 " MiB"}'; done | paste -sd' ')"
