#!/bin/sh
# One-shot, first start only: the crypto-shredding and ledger keys (the command given, i.e.
# `auditflow keys generate`)
# and a random password per stage database login, kept in the `keys` volume. Never overwritten:
# losing the master key loses every sealed personal field. `docker compose down -v` deletes them.
set -eu
out=/run/auditflow-keys/keys.env
if [ -s "$out" ]; then
  echo "keys: $out exists, kept"
  exit 0
fi
umask 077
tmp="$out.tmp"
"$@" >"$tmp"
grep -q "^AUDITFLOW_MASTER_KEY=" "$tmp" || { echo "keys: generator printed no keys" >&2; exit 1; }
for login in persist compliance alert index; do
  printf 'STAGE_DB_PASSWORD_%s=%s\n' "$(echo "$login" | tr a-z A-Z)" \
    "$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')" >>"$tmp"
done
chown 10001:10001 "$tmp"
chmod 0400 "$tmp"
mv "$tmp" "$out"
echo "keys: generated $out"
