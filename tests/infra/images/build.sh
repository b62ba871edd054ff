#!/usr/bin/env bash
# Builds kubesky's container images on this machine without any container registry, and exports
# each as an archive that `ctr -n k8s.io images import <archive>` loads into containerd:
#   localhost/kubesky/python-base:3.11-bookworm     <- base.sh: mmdebstrap'd Debian bookworm python3
#   localhost/kubesky/pause:3.10                    <- pause/main.go (static), the pod sandbox image
#   localhost/kubesky/kubesky-operator:<appVersion> <- operator/Dockerfile     } FROM python-base,
#   localhost/kubesky/kubesky-worker:<appVersion>   <- worker_image/Dockerfile } context = repo root
# <appVersion> is charts/kubesky/Chart.yaml's. Everything lands in buildah's (root) storage and in
# $KUBESKY_CACHE/images (default ~/.cache/kubesky/images):
#   pause.tar operator.tar worker.tar   docker-archive files, each tagged with its ref, at these
#                                       stable paths (replaced atomically when the image changes)
#   images.json                         {"pause": {"ref": ..., "archive": ..., "id": ...}, ...}
#                                       (id: buildah's image ID, the config digest of the OCI image;
#                                       the archive holds the same layers with a docker config)
# The LAST stdout line is, space-separated key=value without quotes (no value contains spaces):
#   pause=<tar> operator=<tar> worker=<tar> pause_ref=<ref> operator_ref=<ref> worker_ref=<ref>
# Everything else goes to stderr.
#
# Incremental: the base is keyed by base.sh's content, the pause image by its Go sources, the
# project images by a digest of the build context (.dockerignore applied), the Dockerfile, the base
# image ID and this script; an unchanged key skips the build, and an unchanged image ID skips the
# export, so a second run does nothing. A changed key rebuilds with buildah's layer cache, so only
# the steps after the first changed input run again (an unchanged lock reuses the pip layer).
#
# The operator and worker images hold no shell, pip or package manager (their Dockerfiles' run-time
# stage is FROM scratch); each new build is checked by running its ENTRYPOINT --help as its USER.
#
# Concurrent runs are serialized by a lock on $KUBESKY_CACHE/images/.lock.
# Needs root and the packages of tests/infra/host-packages.sh, plus Go for the pause binary.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
cache="${KUBESKY_CACHE:-$HOME/.cache/kubesky}/images"
mkdir -p "$cache"

log() { printf '[images] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ "$(id -u)" -eq 0 ]] || die "needs root (buildah's root storage, chroot isolation, mmdebstrap)"
# One build at a time per cache: a second caller (say a node setup running while `make images`
# does) waits, then finds everything up to date, instead of racing on the same tags and archives.
exec 9>"$cache/.lock"
if ! flock -n 9; then
  log "another image build holds $cache/.lock; waiting for it"
  flock 9
fi
for tool in buildah mmdebstrap go; do
  command -v "$tool" >/dev/null \
    || die "$tool not found: run 'bash tests/infra/host-packages.sh' (Go: see the README)"
done
[[ "$cache" != *[[:space:]:]* ]] || die "the cache path '$cache' must not contain spaces or ':'"
py="$repo/.venv/bin/python"
[[ -x "$py" ]] || py=python3

# Which driver buildah uses comes from /etc/containers/storage.conf or its default (overlay where
# the kernel supports it natively, as here); vfs copies every layer in full and is ~3x slower.
driver="$(buildah info --format '{{.store.GraphDriverName}}' 2>/dev/null || echo unknown)"
[[ "$driver" == overlay ]] || log "note: buildah storage driver is '$driver', not overlay: builds will be slower"

image_id() { buildah inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null || true; }
image_label() {
  buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$2\"}}" "$1" 2>/dev/null || true
}

# --- base ---------------------------------------------------------------------------------------
base_ref="$(bash "$here/base.sh" "$cache")"
base_id="$(image_id "$base_ref")"

# --- pause --------------------------------------------------------------------------------------
pause_ref=localhost/kubesky/pause:3.10
build_pause() {
  local key
  key="$(cat "$here/pause/go.mod" "$here/pause/main.go" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)"
  if [[ "$(image_label "$pause_ref" io.kubesky.source-key)" == "$key" ]]; then
    log "pause: cached ($pause_ref, key $key)"
    return
  fi
  log "pause: building $pause_ref from pause/main.go"
  local tmp ctr
  tmp="$(mktemp -d)"
  # Static (no libc in a scratch image); -buildvcs=false and -trimpath keep the binary, hence the
  # image, the same from one commit to the next.
  (cd "$here/pause" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod \
    go build -trimpath -buildvcs=false -ldflags='-s -w' -o "$tmp/pause" .)
  ctr="$(buildah from --pull=never scratch)"
  trap 'buildah rm "$ctr" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
  buildah copy --chmod 0755 "$ctr" "$tmp/pause" /pause >/dev/null
  # 65535 like the upstream pause image: the sandbox needs no privileges at all.
  buildah config --entrypoint '["/pause"]' --user 65535:65535 \
    --label io.kubesky.source-key="$key" "$ctr"
  buildah commit --quiet --rm "$ctr" "$pause_ref" >/dev/null
  trap - EXIT
  rm -rf "$tmp"
}
build_pause

# --- operator and worker ------------------------------------------------------------------------
version="$(sed -n 's/^appVersion:[[:space:]]*["'\'']\{0,1\}\([^"'\'' ]*\)["'\'']\{0,1\}[[:space:]]*$/\1/p' \
  "$repo/charts/kubesky/Chart.yaml")"
[[ -n "$version" ]] || die "no appVersion in charts/kubesky/Chart.yaml"
operator_ref="localhost/kubesky/kubesky-operator:$version"
worker_ref="localhost/kubesky/kubesky-worker:$version"

# pip inside the build verifies TLS against the image's /etc/ssl/certs/ca-certificates.crt (Debian's
# pip does not use certifi). The host's bundle may hold more (a site or proxy CA), so it is mounted
# over the image's for the RUN steps only: it never ends up in a layer.
ca_bundle="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
[[ -f "$ca_bundle" ]] || die "no CA bundle at $ca_bundle (install ca-certificates)"
# chroot isolation: no user/network namespaces or cgroups are needed (this host is cgroup v1 and
# runs no container engine); RUN steps share the host's network, so pip reaches PyPI directly.
# --force-rm: a failed build leaves no working containers behind (the layer cache is unaffected).
bud_flags=(--isolation chroot --pull=never --layers --force-rm --network host
  --build-arg "BASE_IMAGE=$base_ref"
  --volume "$ca_bundle:/etc/ssl/certs/ca-certificates.crt:ro")

context_key="$("$py" "$here/context_digest.py" "$repo")"
build_project() { # build_project <name> <Dockerfile> <ref>
  local name="$1" dockerfile="$2" ref="$3" key stamp="$cache/$1.inputs"
  key="$(printf '%s\n' "$context_key" "$dockerfile" "$base_id" "${bud_flags[*]}" "$ref" \
    | cat - "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)"
  local id
  id="$(image_id "$ref")"
  if [[ -n "$id" && -f "$stamp" && "$(cat "$stamp")" == "$key $id" ]]; then
    log "$name: unchanged ($ref)"
    return
  fi
  log "$name: buildah build -f $dockerfile -t $ref"
  local t0=$SECONDS
  buildah build "${bud_flags[@]}" -f "$repo/$dockerfile" -t "$ref" "$repo" >&2
  check_entrypoint "$name" "$ref"
  printf '%s %s\n' "$key" "$(image_id "$ref")" >"$stamp"
  log "$name: built in $((SECONDS - t0)) s"
}
# The image's ENTRYPOINT runs (--help) as the image's USER: the run-time stage has no shell, so
# this is exec'd directly, and it fails if the non-root user cannot read what the build copied.
check_entrypoint() { # check_entrypoint <name> <ref>
  local name="$1" ref="$2" ctr user entry
  user="$(buildah inspect --type image --format '{{.OCIv1.Config.User}}' "$ref")"
  entry="$(buildah inspect --type image --format '{{index .OCIv1.Config.Entrypoint 0}}' "$ref")"
  ctr="$(buildah from --pull=never "$ref")"
  if ! buildah run --isolation chroot --user "$user" "$ctr" -- "$entry" --help >/dev/null; then
    buildah rm "$ctr" >/dev/null
    die "$name: '$entry --help' failed in $ref as user $user"
  fi
  buildah rm "$ctr" >/dev/null
  log "$name: '$entry --help' runs as $user"
}
build_project operator operator/Dockerfile "$operator_ref"
build_project worker worker_image/Dockerfile "$worker_ref"

# --- archives -----------------------------------------------------------------------------------
export_image() { # export_image <name> <ref>: $cache/<name>.tar, rewritten only for a new image ID
  local name="$1" ref="$2" tar="$cache/$1.tar" id
  id="$(image_id "$ref")"
  [[ -n "$id" ]] || die "$ref is not in buildah's storage"
  if [[ -f "$tar" && -f "$tar.id" && "$(cat "$tar.id")" == "$id" ]]; then
    log "$name: archive up to date ($tar)"
    return
  fi
  log "$name: exporting $ref to $tar"
  rm -f "$tar.tmp"
  # docker-archive keeps the full ref in manifest.json's RepoTags, which ctr import uses as the
  # image name (an oci-archive would need --base-name or an index annotation instead).
  buildah push --quiet "$ref" "docker-archive:$tar.tmp:$ref" >&2
  mv -f "$tar.tmp" "$tar"
  echo "$id" >"$tar.id"
}
export_image pause "$pause_ref"
export_image operator "$operator_ref"
export_image worker "$worker_ref"

json_entry() { # json_entry <name> <ref>
  printf '  "%s": {"ref": "%s", "archive": "%s", "id": "%s"}' "$1" "$2" "$cache/$1.tar" "$(cat "$cache/$1.tar.id")"
}
{
  echo "{"
  json_entry pause "$pause_ref"; echo ","
  json_entry operator "$operator_ref"; echo ","
  json_entry worker "$worker_ref"; echo
  echo "}"
} >"$cache/images.json.tmp"
mv -f "$cache/images.json.tmp" "$cache/images.json"

echo "pause=$cache/pause.tar operator=$cache/operator.tar worker=$cache/worker.tar" \
  "pause_ref=$pause_ref operator_ref=$operator_ref worker_ref=$worker_ref"
