#!/bin/sh
# One-shot: the crypto-shredding and ledger keys (the command given, i.e. `auditflow keys
# generate`, first start only), a random password per stage database login and the API's HS256
# token secret, kept in the `keys` volume. What the file holds is never overwritten: losing the
# master key loses every sealed personal field. Entries it lacks (a login or secret added since
# it was made) are appended. `docker compose down -v` deletes it.
set -eu
out=/run/auditflow-keys/keys.env
tmp="$out.tmp"
umask 077
random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }
if [ -s "$out" ]; then
  cp "$out" "$tmp"
else
  "$@" >"$tmp"
  grep -q "^AUDITFLOW_MASTER_KEY=" "$tmp" || { echo "keys: generator printed no keys" >&2; exit 1; }
fi
for login in persist compliance alert index api; do
  var="STAGE_DB_PASSWORD_$(echo "$login" | tr a-z A-Z)"
  grep -q "^$var=" "$tmp" || printf '%s=%s\n' "$var" "$(random_hex 24)" >>"$tmp"
done
# At least 32 bytes for HS256 (AUDITFLOW_JWT_SECRET); hex, so the file stays plain to source.
grep -q "^AUDITFLOW_JWT_SECRET=" "$tmp" || printf 'AUDITFLOW_JWT_SECRET=%s\n' "$(random_hex 48)" >>"$tmp"
if [ -s "$out" ] && cmp -s "$tmp" "$out"; then
  rm -f "$tmp"
  echo "keys: $out exists, kept"
  exit 0
fi
chown 10001:10001 "$tmp"
chmod 0400 "$tmp"
mv "$tmp" "$out"
echo "keys: wrote $out"
