#!/bin/sh
# First start of the compose PostgreSQL (docker-entrypoint-initdb.d): the schema owner is an
# ordinary login, not the superuser. It runs `auditflow migrate` (which creates the stages'
# group roles) and, with CREATEROLE, the stages' own logins (db-logins service).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v owner_password="$AUDITFLOW_OWNER_PASSWORD" <<'SQL'
CREATE ROLE auditflow LOGIN CREATEROLE NOSUPERUSER NOCREATEDB PASSWORD :'owner_password';
CREATE DATABASE auditflow OWNER auditflow;
REVOKE ALL ON DATABASE auditflow FROM PUBLIC;
SQL
