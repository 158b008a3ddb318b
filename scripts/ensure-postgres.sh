#!/usr/bin/env bash
# Makes sure a PostgreSQL answers on 127.0.0.1:5432 for the cloud-store tests and benchmarks
# (Debian). Starts an installed cluster; on a machine without one, installs it and lets the local
# user `postgres` in over 127.0.0.1 without a password (a throwaway test database server).
# Never fatal: without PostgreSQL the PostgreSQL tests are skipped and say why.
set -uo pipefail
pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
installed_here=0
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "installing postgresql" >&2
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
        --no-install-recommends postgresql >/dev/null || exit 0
    installed_here=1
fi
cluster=$(pg_lsclusters --no-header 2>/dev/null | awk 'NR==1 {print $1" "$2}')
[ -n "$cluster" ] || exit 0
if [ "$installed_here" -eq 1 ]; then
    hba=$(ls /etc/postgresql/*/main/pg_hba.conf 2>/dev/null | head -1)
    [ -n "$hba" ] && $sudo sed -i -E 's/^(host\s+all\s+all\s+127\.0\.0\.1\/32\s+)\S+/\1trust/' "$hba"
fi
$sudo pg_ctlcluster $cluster start 2>/dev/null || $sudo pg_ctlcluster $cluster reload 2>/dev/null
for _ in $(seq 1 20); do pg_isready -q -h 127.0.0.1 -p 5432 && exit 0; sleep 0.5; done
echo "PostgreSQL did not come up; its tests will be skipped" >&2
exit 0
