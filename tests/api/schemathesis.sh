#!/usr/bin/env bash
# Runs schemathesis (PyPI) against a running Countersign and its own OpenAPI document, on
# SQLite and on PostgreSQL: property-based requests to every operation, and every response
# checked for a server error and against the document (status code, content type, schema).
# Any failure fails the run. Usage: tests/api/schemathesis.sh [path/to/countersign]
set -euo pipefail
cd "$(dirname "$0")/../.."
binary="${1:-target/debug/countersign}"
[ -x "$binary" ] || cargo build --quiet --bin countersign
command -v schemathesis >/dev/null 2>&1 || python3 -m pip install --quiet "schemathesis==4.32.5"

work="$(mktemp -d)"
server=""
pg_database=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
  if [ -n "$pg_database" ]; then
    psql "${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" -qc "DROP DATABASE IF EXISTS $pg_database WITH (FORCE)" >/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

run_against() {
  local label="$1" database_url="$2" port="$3"
  local dir="$work/$label"
  mkdir -p "$dir"
  export COUNTERSIGN_DATABASE_URL="$database_url"
  export COUNTERSIGN_DATA_DIR="$dir"
  export COUNTERSIGN_DROP_FOLDER="$dir/inbox"
  export COUNTERSIGN_MAIL_FOLDER="$dir/outbox"
  export COUNTERSIGN_WEB_BIND="127.0.0.1:$port"
  # Some cases to read, change and annotate: every fixture email, good and bad.
  "$binary" ingest tests/fixtures/mail >/dev/null
  token="$("$binary" tokens create --name "schemathesis-$label" --role admin 2>/dev/null)"
  "$binary" serve >"$dir/serve.log" 2>&1 &
  server=$!
  for _ in $(seq 1 60); do
    python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
      "http://127.0.0.1:$port/api/v1/openapi.json" 2>/dev/null && break
    sleep 0.5
  done
  echo "schemathesis against $label"
  # Real identifiers, so that requests reach cases rather than only their 404s: the first
  # case of this year, and the first message and attachment.
  cat >"$dir/schemathesis.toml" <<TOML
[parameters]
reference = "CS-$(date +%Y)-000001"
id = 1
TOML
  schemathesis --no-color --config-file "$dir/schemathesis.toml" run "http://127.0.0.1:$port/api/v1/openapi.json" \
    --url "http://127.0.0.1:$port" \
    --header "Authorization: Bearer $token" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --phases examples,coverage,fuzzing \
    --max-examples "${SCHEMATHESIS_EXAMPLES:-60}" \
    --suppress-health-check all \
    --seed 1 \
    || { echo "--- server log ($label)"; tail -50 "$dir/serve.log"; exit 1; }
  kill "$server"; wait "$server" 2>/dev/null || true
  server=""
}

run_against sqlite "sqlite://$work/sqlite.db?mode=rwc" 18431
if [ -n "${TEST_DATABASE_URL:-}" ] || pg_isready -h 127.0.0.1 -q 2>/dev/null; then
  admin="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
  pg_database="countersign_schemathesis_$$"
  psql "$admin" -qc "CREATE DATABASE $pg_database" >/dev/null
  run_against postgres "${admin%/*}/$pg_database" 18432
fi
