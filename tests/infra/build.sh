#!/usr/bin/env bash
# Builds the real test services from registries, cached under ~/.cache/kubesky by version:
#   kube-apiserver, kube-controller-manager, kubectl  <- k8s.io/kubernetes (Go module proxy)
#   etcd                                              <- go.etcd.io/etcd/server/v3
#   helm                                              <- helm.sh/helm/v3
#   Apache Kafka (KRaft) jars                         <- Maven Central
# Idempotent: a component whose inputs (go.mod, go.sum, sources, pom.xml) are unchanged is not rebuilt.
# Prints the directory holding the binaries on its last line: bin=<dir> kafka=<dir>.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${KUBESKY_CACHE:-$HOME/.cache/kubesky}"
mkdir -p "$cache"

log() { printf '[infra] %s\n' "$*" >&2; }

key_of() { # a short content hash of the given files
  cat "$@" | sha256sum | cut -c1-12
}

build_go() { # build_go <module dir> <name> <packages...>
  local dir="$1" name="$2"; shift 2
  local key out
  key="$(key_of "$dir"/go.mod "$dir"/go.sum $(ls "$dir"/*.go 2>/dev/null || true))"
  out="$cache/bin/$name-$key"
  if [[ -f "$out/.complete" ]]; then
    log "$name: cached in $out"
  else
    log "$name: building $* (first time on this machine: several minutes)"
    local t0=$SECONDS
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    (cd "$dir" && GOFLAGS=-mod=readonly CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$out.tmp/" "$@")
    touch "$out.tmp/.complete"
    rm -rf "$out" && mv "$out.tmp" "$out"
    log "$name: built in $((SECONDS - t0)) s"
  fi
  mkdir -p "$cache/bin/current"
  for f in "$out"/*; do ln -sfn "$f" "$cache/bin/current/$(basename "$f")"; done
}

build_kafka() {
  local dir="$here/kafka" key out
  key="$(key_of "$dir/pom.xml")"
  out="$cache/kafka-$key"
  if [[ -f "$out/.complete" ]]; then
    log "kafka: cached in $out"
  else
    log "kafka: resolving the broker's jars from Maven Central"
    local t0=$SECONDS
    rm -rf "$out.tmp"
    (cd "$dir" && mvn -B -q -Dstyle.color=never dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$out.tmp/libs")
    touch "$out.tmp/.complete"
    rm -rf "$out" && mv "$out.tmp" "$out"
    log "kafka: ready in $((SECONDS - t0)) s"
  fi
  ln -sfn "$out" "$cache/kafka-current"
}

build_go "$here/go/etcd" etcd .
build_go "$here/go/kube" kube k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
build_go "$here/go/helm" helm helm.sh/helm/v3/cmd/helm
build_kafka
echo "bin=$cache/bin/current kafka=$cache/kafka-current"
