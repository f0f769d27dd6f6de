#!/usr/bin/env bash
# Debian's chromium for the tests that render the evaluation report (headless, no download
# from anywhere but the Debian archive). Called by `make setup`; quick when it is there.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
else
  echo "install_chromium: chromium is missing; install Debian's 'chromium' package (as root: apt-get install chromium)" >&2
  exit 1
fi
echo "installing Debian's chromium package (for the HTML report tests)"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium >/dev/null
