#!/usr/bin/env bash
# Prepares a fresh machine for the test suite: the package with its test extras in .venv,
# a PostgreSQL server on 127.0.0.1 (tests also run the catalog on it), and Debian's Chromium
# (the web page test drives it with Playwright). Safe to run again: each step checks first.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO="" AS_PG="runuser -u postgres --"
[ "$(id -u)" -eq 0 ] || { SUDO="sudo"; AS_PG="sudo -u postgres"; }

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

# PostgreSQL: start the distribution's cluster and make the test role and database.
cluster=$(pg_lsclusters -h | awk 'NR==1 {print $1" "$2}')
if [ -z "$cluster" ]; then
  version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  $SUDO pg_createcluster "$version" main >/dev/null
  cluster="$version main"
fi
$SUDO pg_ctlcluster $cluster start 2>/dev/null || true
for _ in $(seq 1 30); do
  $AS_PG psql -qtAc "select 1" >/dev/null 2>&1 && break
  sleep 1
done
$AS_PG psql -qtAc "select 1 from pg_roles where rolname='mmsearch'" | grep -q 1 ||
  $AS_PG psql -qc "create role mmsearch login password 'mmsearch' createdb"
$AS_PG psql -qtAc "select 1 from pg_database where datname='mmsearch_test'" | grep -q 1 ||
  $AS_PG psql -qc "create database mmsearch_test owner mmsearch"
echo "test environment ready"
