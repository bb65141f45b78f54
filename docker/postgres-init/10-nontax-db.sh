#!/usr/bin/env bash
# The order database, next to Airflow's metadata database on the same server but separate from
# it: its own role and database. The postgres image runs this once, when its volume is empty
# (mounted into /docker-entrypoint-initdb.d by docker-compose.yaml). The schema itself comes
# from the migrations (`nontax migrate`, run by the airflow-init service).
# tests/stack/test_compose.py runs this script against a local server too.
set -euo pipefail
: "${NONTAX_DB_PASSWORD:?set NONTAX_DB_PASSWORD}"
NONTAX_DB_NAME="${NONTAX_DB_NAME:-nontax}"
NONTAX_DB_USER="${NONTAX_DB_USER:-nontax}"
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" \
    --dbname "${POSTGRES_DB:-postgres}" \
    -v db="$NONTAX_DB_NAME" -v role="$NONTAX_DB_USER" -v password="$NONTAX_DB_PASSWORD" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"role";
SQL
