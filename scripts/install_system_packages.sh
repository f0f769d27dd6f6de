#!/usr/bin/env bash
# Debian's packages the tests start for real: chromium (the HTML report renders in a headless
# browser) and postgresql (the job store on a throwaway PostgreSQL cluster). Called by
# `make setup`; returns at once when both are there. It installs only from the Debian archive
# apt is configured with (nothing downloaded from anywhere else), as root or through sudo.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ! command -v pg_ctl >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  missing+=(postgresql)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "install_system_packages: ${missing[*]} missing and this user cannot install them." >&2
  echo "install_system_packages: as root, run: apt-get install --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

echo "install_system_packages: installing Debian's ${missing[*]} (for the tests)"
"${as_root[@]}" apt-get update -qq
# env, not a plain assignment: sudo drops the caller's environment.
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"

command -v chromium >/dev/null 2>&1 || { echo "install_system_packages: chromium is not on PATH" >&2; exit 1; }
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 \
  || { echo "install_system_packages: PostgreSQL's pg_ctl is not installed" >&2; exit 1; }
