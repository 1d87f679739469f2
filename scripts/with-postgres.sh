#!/usr/bin/env bash
# Run a command with SWITCHBOARD_TEST_DATABASE_URL pointing at a PostgreSQL that accepts
# connections without a password. In order of preference:
#   1. SWITCHBOARD_TEST_DATABASE_URL as already set;
#   2. the local server on 127.0.0.1:5432, if it lets user postgres in without a password;
#   3. a throwaway trust-auth cluster made with initdb on a free port, stopped afterwards.
# The tests create (and drop) a fresh database of their own on that server.
# SWITCHBOARD_TEST_FORCE_INITDB=1 skips 1 and 2 (to exercise the fallback).
set -euo pipefail

if [[ -n "${SWITCHBOARD_TEST_DATABASE_URL:-}" && -z "${SWITCHBOARD_TEST_FORCE_INITDB:-}" ]]; then
  exec "$@"
fi

if [[ -z "${SWITCHBOARD_TEST_FORCE_INITDB:-}" ]] && command -v psql >/dev/null 2>&1 &&
   PGCONNECT_TIMEOUT=3 psql -w -h 127.0.0.1 -p 5432 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  export SWITCHBOARD_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:5432/postgres"
  exec "$@"
fi

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [[ -z "$bindir" || ! -x "$bindir/initdb" ]]; then
  echo "with-postgres: no PostgreSQL reachable on 127.0.0.1:5432 and no initdb found;" >&2
  echo "  install PostgreSQL (apt-get install postgresql) or set SWITCHBOARD_TEST_DATABASE_URL" >&2
  exit 2
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
datadir=$(mktemp -d /tmp/switchboard-pg.XXXXXX)
as_owner=()
if [[ $(id -u) -eq 0 ]]; then
  # initdb and postgres refuse to run as root; use the postgres system user.
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  chown postgres "$datadir"
  as_owner=(runuser -u postgres --)
fi

cleanup() {
  "${as_owner[@]}" "$bindir/pg_ctl" -D "$datadir" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$datadir"
}
trap cleanup EXIT

echo "with-postgres: starting a throwaway PostgreSQL on 127.0.0.1:$port" >&2
"${as_owner[@]}" "$bindir/initdb" -D "$datadir" -U postgres --auth=trust -E UTF8 >/dev/null
"${as_owner[@]}" "$bindir/pg_ctl" -D "$datadir" -w -l "$datadir/server.log" \
  -o "-h 127.0.0.1 -p $port -k $datadir -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
  start >/dev/null
export SWITCHBOARD_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:$port/postgres"
"$@"
