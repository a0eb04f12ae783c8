#!/bin/sh
# After `auditflow migrate`: one login per stage and one for the API, each a member of its own
# group role only (migrations 0006, 0010, 0011), with the password generated into the keys
# volume. Idempotent.
set -eu
. /run/auditflow-keys/keys.env
for stage in persist compliance alert index api; do
  var="STAGE_DB_PASSWORD_$(echo "$stage" | tr a-z A-Z)"
  eval "password=\$$var"
  psql -v ON_ERROR_STOP=1 -v login="auditflow_${stage}_login" -v grp="auditflow_${stage}" \
    -v password="$password" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'login')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'login') \gexec
ALTER ROLE :"login" LOGIN NOCREATEROLE NOCREATEDB PASSWORD :'password';
GRANT :"grp" TO :"login";
SQL
done
echo "db-logins: persist, compliance, alert, index and api logins ready"
