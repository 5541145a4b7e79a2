#!/usr/bin/env bash
# Instructions the server spends on one request, counted by valgrind's callgrind: a figure the
# machine's noise does not move, for comparing two builds where wrk's timings cannot tell them
# apart. Starts BIN under callgrind with instrumentation off against an already seeded
# database (benches/scale.sh, or `countersign dev seed`), signs in, warms the path up with 30
# requests, then counts N requests (default 100) one at a time and prints the mean. Only the
# server's own instructions: PostgreSQL's are not counted. Asserts nothing.
#
#   benches/instructions.sh [BIN] [PATH] [N]
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/countersign_scale \
#       benches/instructions.sh target/release/countersign /cases/SD-2022-0890718
#
# KEEP=FILE keeps the profile of the N counted requests.
#
# Needs: valgrind, python3, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(realpath "${1:-target/release/countersign}")"
path="${2:-/}"
n="${3:-100}"
port="${PORT:-18311}"
work="$(mktemp -d /tmp/countersign-instructions.XXXXXX)"
export COUNTERSIGN_DATA_DIR="$work/data" COUNTERSIGN_DROP_FOLDER="$work/data/inbox" COUNTERSIGN_MAIL_FOLDER="$work/data/sent"
export COUNTERSIGN_DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/countersign_scale}"
export COUNTERSIGN_WORKFLOWS_DIR="$PWD/workflows" COUNTERSIGN_TEMPLATES_DIR="$PWD/templates" COUNTERSIGN_LOG=warn
export COUNTERSIGN_WEB_BASE_URL="http://127.0.0.1:$port"
mkdir -p "$work/data/inbox"
COUNTERSIGN_WEB_BIND="127.0.0.1:$port" valgrind --tool=callgrind --instr-atstart=no \
  --callgrind-out-file="$work/callgrind.%p" "$bin" serve >"$work/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 600); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done
run="$(date +%s%N)"
link="$("$bin" users add "instructions-$run@nhs.net" --role admin | grep -o 'http[^ ]*set-password/[^ ]*')"
cookie="$(python3 benches/sign_in.py "$link" "http://127.0.0.1:$port" "instructions-$run@nhs.net")"
status="$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: $cookie" "http://127.0.0.1:$port$path")"
echo "GET $path: status $status"
for _ in $(seq 1 30); do curl -fs -o /dev/null -H "Cookie: $cookie" "http://127.0.0.1:$port$path"; done
callgrind_control -i on "$pid" >/dev/null 2>&1
for _ in $(seq 1 "$n"); do curl -fs -o /dev/null -H "Cookie: $cookie" "http://127.0.0.1:$port$path"; done
callgrind_control -i off "$pid" >/dev/null 2>&1
callgrind_control -d "$pid" >/dev/null 2>&1
sleep 1
total=$(cat "$work"/callgrind.*.1 | awk '/^totals:/ {print $2}')
echo "$(basename "$bin") GET $path: $((total / n)) instructions a request (callgrind, mean of $n)"
# KEEP=FILE keeps callgrind's profile, for `callgrind_annotate --inclusive=yes FILE`.
if [ -n "${KEEP:-}" ]; then cp "$work"/callgrind.*.1 "$KEEP"; fi
