#!/usr/bin/env bash
# Makes a Debian bookworm base image locally, for machines that reach the Debian
# archive and PyPI but no container registry (so `python:3.11-slim` cannot be
# pulled). debootstrap builds a minimal root with Debian's python3 (3.11),
# python3-venv and ca-certificates from the archive apt is configured with; it
# is copied into a `buildah from scratch` container and committed as TAG.
#
#   scripts/make_base_image.sh [TAG]      # default localhost/slmops-debian:bookworm
#
# Runs as root (buildah with the vfs storage driver). Installs buildah and
# debootstrap with apt-get when they are missing. Returns at once when TAG
# exists; SLMOPS_BASE_REBUILD=1 builds it again. DEBIAN_MIRROR overrides the
# archive URL read from apt's sources.
set -euo pipefail

TAG=${1:-localhost/slmops-debian:bookworm}
SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates
BUILDAH=(buildah --storage-driver vfs)

if [ "$(id -u)" -ne 0 ]; then
  echo "make_base_image: run as root (buildah with the vfs driver, debootstrap)" >&2
  exit 1
fi

missing=()
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "make_base_image: installing Debian's ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ "${SLMOPS_BASE_REBUILD:-0}" != 1 ] && "${BUILDAH[@]}" inspect --type image "$TAG" >/dev/null 2>&1; then
  echo "make_base_image: $TAG exists (SLMOPS_BASE_REBUILD=1 builds it again)"
  exit 0
fi

# The Debian archive apt uses: the first URI of a "debian" suite in sources.list(.d),
# in one-line ("deb URI SUITE ...") or deb822 ("URIs: URI") form.
apt_sources() {
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true
}
mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(apt_sources | awk '
    /^[[:space:]]*#/ { next }
    $1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }
    $1 == "URIs:" { print $2 }' | grep -E '/debian/?$' | head -n 1 || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}
security=$(apt_sources | grep -oE '[a-z]+://[^ ]+/debian-security/?' | head -n 1 || true)

root=$(mktemp -d /var/tmp/slmops-debian.XXXXXX)
ctr=""
cleanup() {
  [ -n "$ctr" ] && "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true
  rm -rf "$root"
}
trap cleanup EXIT

echo "make_base_image: debootstrap $SUITE from $mirror (+ $PACKAGES)"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$mirror" >/dev/null
{
  echo "deb $mirror $SUITE main"
  echo "deb $mirror $SUITE-updates main"
  [ -n "$security" ] && echo "deb $security $SUITE-security main"
} > "$root/etc/apt/sources.list"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/tmp/*

ctr=$("${BUILDAH[@]}" from scratch)
mnt=$("${BUILDAH[@]}" mount "$ctr")
# tar keeps owners, modes and links (the root holds files that root does not own).
tar -C "$root" --numeric-owner -cf - . | tar -C "$mnt" --numeric-owner -xpf -
"${BUILDAH[@]}" umount "$ctr" >/dev/null
"${BUILDAH[@]}" config \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 \
  --cmd '["/bin/bash"]' \
  --label org.opencontainers.image.title=slmops-debian \
  --label org.opencontainers.image.description="Debian $SUITE minbase with python3 and python3-venv" \
  "$ctr"
"${BUILDAH[@]}" commit --quiet "$ctr" "$TAG" >/dev/null
echo "make_base_image: committed $TAG"
