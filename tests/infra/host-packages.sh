#!/usr/bin/env bash
# Installs the Debian packages that a real Kubernetes node and the image builds need on this host:
#   containerd runc containernetworking-plugins iptables ipset conntrack iproute2  <- the node
#     (kubelet's runtime, kube-proxy, kube-router's NetworkPolicy)
#   buildah debootstrap mmdebstrap ca-certificates                    <- tests/infra/images/build.sh
#   tmux                                                              <- tests/integration/operator/test_cli.py (a real terminal)
# Extra package names given as arguments are installed too.
# Idempotent: when every package is already installed it only asks dpkg (no apt-get update), so it
# is cheap to run before every build. Needs root on Debian (or a derivative) with apt: otherwise it
# exits 1 saying why.
set -euo pipefail

packages=(
  containerd runc containernetworking-plugins iptables ipset conntrack iproute2
  buildah debootstrap mmdebstrap ca-certificates
  tmux
  "$@"
)

fail() {
  printf 'host-packages.sh: %s\n' "$*" >&2
  exit 1
}

# Refuse early with a reason: a half-installed node is worse than a clear message.
[[ "$(uname -s)" == Linux ]] \
  || fail "this host is $(uname -s), not Linux. The kubesky node and image builds need a Linux host \
with apt (Debian bookworm or a derivative): run this on such a machine or VM, as root."
if ! command -v apt-get >/dev/null || ! command -v dpkg-query >/dev/null; then
  fail "apt-get/dpkg-query not found: this is not a Debian-family system. Install the equivalent \
of these Debian packages with your distribution's package manager instead: ${packages[*]}."
fi
# Root always: apt-get needs it, and so do the image builds that follow (buildah's root storage,
# chroot isolation); a rootless setup would need subuid maps and another storage configuration.
[[ "$(id -u)" -eq 0 ]] \
  || fail "not running as root (uid $(id -u)). Installing the node and image-build packages \
(${packages[*]}) with apt-get, and the image builds after it, need root: run 'sudo bash $0' \
(or 'sudo make images'), or have an administrator install those packages and run the build as root."

missing=()
for p in "${packages[@]}"; do
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" == installed ]] \
    || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "[host-packages] all present: ${packages[*]}" >&2
  exit 0
fi

echo "[host-packages] installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# A stale or empty package list makes the install fail with 'unable to locate', so refresh first;
# a source that is unreachable is not fatal here, the install itself decides.
apt-get update -q || echo "[host-packages] apt-get update reported errors; trying the install anyway" >&2
apt-get install -y -q --no-install-recommends "${missing[@]}"
