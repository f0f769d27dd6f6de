#!/usr/bin/env bash
# Debian's chromium for the tests that render the evaluation report in a headless browser.
# Called by `make setup`; returns at once when chromium is on PATH. It installs only from the
# Debian archive apt is configured with (no browser download from anywhere else), as root or
# through sudo.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "install_chromium: chromium is missing and this user cannot install it." >&2
  echo "install_chromium: as root, run: apt-get install --no-install-recommends chromium" >&2
  exit 1
fi

echo "install_chromium: installing Debian's chromium package (for the HTML report tests)"
"${as_root[@]}" apt-get update -qq
# env, not a plain assignment: sudo drops the caller's environment.
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium

if ! command -v chromium >/dev/null 2>&1; then
  echo "install_chromium: apt-get installed chromium but it is not on PATH" >&2
  exit 1
fi
