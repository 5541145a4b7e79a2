#!/usr/bin/env bash
# Two instances on one PostgreSQL, measured the way session 12 compared builds: both started
# on an already seeded database (benches/scale.sh, or `countersign dev seed`), warmed up with
# one 5 s run, then RUNS (default 3) runs of 5 s with 16 connections on each instance at once.
# Prints each instance's median, p99 and requests/s per run. Asserts nothing.
#
#   benches/two_instances.sh [BIN] [TEMPLATES_DIR] [PATH]
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/countersign_scale benches/two_instances.sh \
#       target/release/countersign templates /cases/CS-2026-000001
#
# To compare two builds, run it for each in turn (alternating, more than once): the machine's
# noise is larger than most single changes. Needs: wrk, python3, curl.
set -uo pipefail
cd "$(dirname "$0")/.."
bin="$(realpath "${1:-target/release/countersign}")"
templates="$(realpath "${2:-templates}")"
path="${3:-/}"
work="$(mktemp -d /tmp/countersign-two.XXXXXX)"
export COUNTERSIGN_DATA_DIR="$work/data" COUNTERSIGN_DROP_FOLDER="$work/data/inbox" COUNTERSIGN_MAIL_FOLDER="$work/data/sent"
export COUNTERSIGN_DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/countersign_scale}"
export COUNTERSIGN_WORKFLOWS_DIR="$PWD/workflows" COUNTERSIGN_TEMPLATES_DIR="$templates" COUNTERSIGN_LOG=warn
ports=(18300 18301)
export COUNTERSIGN_WEB_BASE_URL="http://127.0.0.1:${ports[0]}"
mkdir -p "$work/data/inbox"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
for p in "${ports[@]}"; do
  COUNTERSIGN_WEB_BIND="127.0.0.1:$p" "$bin" serve >"$work/serve-$p.log" 2>&1 &
  pids+=($!)
done
for p in "${ports[@]}"; do
  for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$p/healthz" >/dev/null && break; sleep 0.1; done
done
run="$(date +%s)"
link="$("$bin" users add "two-$run@nhs.net" --role admin | grep -o 'http[^ ]*set-password/[^ ]*')"
cookie="$(python3 benches/sign_in.py "$link" "http://127.0.0.1:${ports[0]}" "two-$run@nhs.net")"
echo "GET $path: status $(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: $cookie" "http://127.0.0.1:${ports[0]}$path")"
once() {
  local w=()
  for p in "${ports[@]}"; do
    wrk -t2 -c16 -d5s --latency --timeout 30s -H "Cookie: $cookie" "http://127.0.0.1:$p$path" >"$work/wrk-$p.txt" 2>&1 &
    w+=($!)
  done
  wait "${w[@]}"
}
once
for i in $(seq 1 "${RUNS:-3}"); do
  once
  for p in "${ports[@]}"; do
    echo "  run $i, :$p: $(grep -E '^\s+(50|99)%|Requests/sec|Non-2xx' "$work/wrk-$p.txt" | tr -s ' ' | paste -sd' ')"
  done
done
