#!/usr/bin/env bash
# Concurrency benchmark against the real server (release build), with Debian's `wrk`: the
# fault review's load test. Fills a database with N sample emails, serves it, signs in, then
# drives the case page, the queue and a search from 2, 4 and 32 connections, and prints wrk's
# figures (latency percentiles, requests/s) and the server's peak RSS. It asserts nothing.
#
#   benches/load.sh                      # SQLite, 20,000 emails
#   COUNT=5000 benches/load.sh
#   DATABASE_URL=postgres://postgres@127.0.0.1:5432/countersign_load benches/load.sh
#
# Needs: wrk (apt-get install wrk), python3, curl.
set -euo pipefail
cd "$(dirname "$0")/.."
count="${COUNT:-20000}"
seconds="${SECONDS_EACH:-10}"
port="${PORT:-18080}"
work="$(mktemp -d /tmp/countersign-load.XXXXXX)"
trap 'kill "${server:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --quiet --bin countersign
bin="$PWD/target/release/countersign"
export COUNTERSIGN_DATA_DIR="$work/data"
export COUNTERSIGN_DROP_FOLDER="$work/data/inbox"
export COUNTERSIGN_MAIL_FOLDER="$work/data/sent-mail"
export COUNTERSIGN_DATABASE_URL="${DATABASE_URL:-sqlite://$work/data/countersign.db?mode=rwc}"
export COUNTERSIGN_WORKFLOWS_DIR="$PWD/workflows"
export COUNTERSIGN_TEMPLATES_DIR="$PWD/templates"
export COUNTERSIGN_WEB_BIND="127.0.0.1:$port"
export COUNTERSIGN_WEB_BASE_URL="http://127.0.0.1:$port"
export COUNTERSIGN_LOG="${COUNTERSIGN_LOG:-warn}"
if [[ "$COUNTERSIGN_DATABASE_URL" == postgres* ]]; then
  name="${COUNTERSIGN_DATABASE_URL##*/}"
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $name WITH (FORCE)" -c "CREATE DATABASE $name" postgres
fi

echo "== $count sample emails into ${COUNTERSIGN_DATABASE_URL%%\?*}"
"$bin" samples "$work/data/inbox" --count "$count" >/dev/null
start=$(date +%s.%N)
"$bin" serve --once >/dev/null
echo "ingested in $(echo "$(date +%s.%N) - $start" | bc) s"
link="$("$bin" users add load@nhs.net --role admin | grep -o 'http[^ ]*set-password/[^ ]*')"

"$bin" serve >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done

cookie="$(python3 benches/sign_in.py "$link" "http://127.0.0.1:$port" load@nhs.net)"
reference="CS-$(date +%Y)-$(printf '%06d' $((count / 2)))"
for path in "/cases/$reference" "/" "/?q=surgery"; do
  for connections in 2 4 32; do
    echo "== GET $path, $connections connections, ${seconds}s"
    wrk -t2 -c"$connections" -d"${seconds}s" --latency --timeout 30s -H "Cookie: $cookie" \
      "http://127.0.0.1:$port$path" | grep -E "Latency|50%|90%|99%|Requests/sec|Non-2xx|errors"
  done
done
echo "server peak RSS: $(grep VmHWM /proc/$server/status | awk '{print $2, $3}')"
