#!/usr/bin/env bash
# The system packages the test suite starts private instances of: redis-server, Chromium (the
# browser tests of `darkroom serve`), pgbouncer and redis-sentinel (the multi-host tests) and
# iproute2 (network namespaces). Installed with apt-get when one is missing and this runs as root
# (as CI does); otherwise it says what is missing and the tests that need it skip. Idempotent.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
command -v redis-sentinel >/dev/null || need+=(redis-sentinel)
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || need+=(iproute2)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "darkroom: the tests that need ${need[*]} will skip; install them (Debian/Ubuntu: sudo apt-get install ${need[*]})." >&2
    exit 0
fi
echo "darkroom: installing ${need[*]} for the test suite" >&2
# The packages' own services must not start (the tests run private instances on free ports):
# a policy-rc.d that refuses, put back as it was afterwards.
policy=/usr/sbin/policy-rc.d
saved=""
if [ -e "$policy" ]; then saved=$(mktemp); cp -p "$policy" "$saved"; fi
printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"
restore() { if [ -n "$saved" ]; then mv "$saved" "$policy"; else rm -f "$policy"; fi; }
trap restore EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null 2>&1 || {
    apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
}
