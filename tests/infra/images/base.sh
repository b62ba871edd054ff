#!/usr/bin/env bash
# Builds the local stand-in for python:3.11-slim-bookworm from Debian packages, for machines that
# cannot pull from a container registry:
#   mmdebstrap a minimal bookworm rootfs (+ bookworm-updates and bookworm-security) holding
#   python3 (3.11), python3-venv, python3-pip, ca-certificates and python-is-python3, and import it
#   into buildah's storage as localhost/kubesky/python-base:3.11-bookworm.
# Made to behave like the official image where the project's Dockerfiles rely on it: `python` and
# `pip` exist, `python -m pip install` works (no EXTERNALLY-MANAGED marker), PATH and LANG=C.UTF-8
# are set, no apt lists/caches/docs. Unlike it, Python is Debian's (/usr/bin, 3.11.2 + Debian fixes)
# and pip is Debian's 23.0.1, which trusts /etc/ssl/certs/ca-certificates.crt rather than certifi.
# Only the Dockerfiles' build stage runs on it: their runtime step also uses ldd, ldconfig,
# dpkg-query, chroot, tar, awk and find, which the official image and minbase both have
# (Essential/required packages), and copies out of it only what the interpreter loads.
#
# Usage: base.sh <cache dir>. Cached by the content of this script (which holds the package list;
# comment lines excluded)
# and the mirrors: the rootfs as <cache dir>/python-base-<key>.tar, the image by its label
# io.kubesky.base-key; when both match nothing is done. Prints the image ref on stdout.
set -euo pipefail

cache="$1"
ref=localhost/kubesky/python-base:3.11-bookworm
mirror="${KUBESKY_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security="${KUBESKY_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
packages=python3,python3-venv,python3-pip,ca-certificates,python-is-python3

log() { printf '[images] %s\n' "$*" >&2; }

# Comments do not count: editing them should not cost a new rootfs and a full image rebuild.
key="$( { grep -v '^[[:space:]]*#' "${BASH_SOURCE[0]}"; echo "$mirror $security"; } | sha256sum | cut -c1-12)"
rootfs="$cache/python-base-$key.tar"

have="$(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "io.kubesky.base-key"}}' \
  "$ref" 2>/dev/null || true)"
if [[ "$have" == "$key" ]]; then
  log "python-base: cached ($ref, key $key)"
  echo "$ref"
  exit 0
fi

if [[ ! -f "$rootfs" ]]; then
  log "python-base: mmdebstrap bookworm with $packages (about a minute)"
  t0=$SECONDS
  # The merged-usr hook lays out /bin -> usr/bin itself, so the usrmerge package (and the perl it
  # pulls in) is not installed; recommends are off as in Debian's own slim images; the dpkg
  # excludes stay in the image (/etc/dpkg/dpkg.cfg.d) so later apt-get installs stay slim too.
  # The output goes to a log (hundreds of lines); its tail is shown if it fails. The hooks are
  # single-quoted on purpose: mmdebstrap runs them with the rootfs path as $1.
  # shellcheck disable=SC2016
  if ! mmdebstrap --mode=root --format=tar --variant=minbase --include="$packages" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -f "$1"/usr/lib/python3.11/EXTERNALLY-MANAGED' \
    --customize-hook='rm -rf "$1"/var/cache/apt/*.bin "$1"/var/cache/debconf/*-old "$1"/var/log/apt/* "$1"/var/log/dpkg.log "$1"/var/log/alternatives.log' \
    --customize-hook='chroot "$1" python -c "import ensurepip, ssl, venv"' \
    bookworm "$rootfs.tmp" \
    "deb $mirror bookworm main" \
    "deb $mirror bookworm-updates main" \
    "deb $security bookworm-security main" >"$cache/python-base.log" 2>&1; then
    tail -n 30 "$cache/python-base.log" >&2
    log "python-base: mmdebstrap failed; the whole log is $cache/python-base.log"
    rm -f "$rootfs.tmp"
    exit 1
  fi
  mv "$rootfs.tmp" "$rootfs"
  log "python-base: rootfs in $((SECONDS - t0)) s: $rootfs"
fi
# Only the current key's rootfs is worth keeping.
find "$cache" -maxdepth 1 -name 'python-base-*.tar' ! -name "$(basename "$rootfs")" -delete

log "python-base: importing $rootfs as $ref"
ctr="$(buildah from --pull=never scratch)"
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
mnt="$(buildah mount "$ctr")"
# Device nodes are the runtime's business (it mounts /dev); numeric owners because the host's
# user database is not the image's.
tar -xpf "$rootfs" -C "$mnt" --numeric-owner --xattrs --exclude='./dev/*'
buildah umount "$ctr" >/dev/null
buildah config \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 \
  --cmd python3 \
  --label io.kubesky.base-key="$key" \
  --label org.opencontainers.image.description="Debian bookworm python3 (3.11) base built by kubesky's tests/infra/images/base.sh" \
  "$ctr"
buildah commit --quiet --rm "$ctr" "$ref" >/dev/null
trap - EXIT
log "python-base: $ref ($(buildah inspect --type image --format '{{.FromImageID}}' "$ref" | cut -c1-12))"
echo "$ref"
