#!/usr/bin/env bash
# Builds the real test services from registries, cached under ~/.cache/kubesky by version:
#   kube-apiserver, kube-controller-manager, kubectl,
#   kubelet, kube-scheduler, kube-proxy               <- k8s.io/kubernetes (Go module proxy)
#   etcd                                              <- go.etcd.io/etcd/server/v3
#   helm                                              <- helm.sh/helm/v3
#   coredns                                           <- github.com/coredns/coredns
#   kube-router                                       <- github.com/cloudnativelabs/kube-router/v2
#   source-controller, kustomize-controller (Flux)    <- github.com/fluxcd/{source,kustomize}-controller
#   Apache Kafka (KRaft) jars                         <- Maven Central
#   the Tiled server (tiled serve), in its own venv   <- PyPI (tests/infra/tiled/requirements.txt)
# Go binaries are static (CGO_ENABLED=0); the Kubernetes ones and kube-router carry their release
# version (from go.mod) via -X ldflags.
# Idempotent: a component whose inputs (go.mod, go.sum, sources, ldflags recipe, pom.xml) are
# unchanged is not rebuilt.
# Prints the directory holding the binaries on its last line: bin=<dir> kafka=<dir>.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${KUBESKY_CACHE:-$HOME/.cache/kubesky}"
mkdir -p "$cache"

log() { printf '[infra] %s\n' "$*" >&2; }

# Several test scripts may start this at once: one builds, the others wait and then find it cached
# (two go builds of one component would also race on its .tmp directory).
if command -v flock >/dev/null; then
  exec 9>"$cache/.build.lock"
  flock -n 9 || { log "waiting for another build.sh to finish"; flock 9; }
fi

key_of() { # a short content hash of the given files
  cat "$@" | sha256sum | cut -c1-12
}

module_release() { # module_release <module dir> <module path>: prints "<version> <release time, UTC>"
  # The proxy's release time serves as a reproducible build date.
  (cd "$1" && GOFLAGS=-mod=readonly go list -m \
    -f '{{.Version}} {{with .Time}}{{.UTC.Format "2006-01-02T15:04:05Z"}}{{else}}1970-01-01T00:00:00Z{{end}}' "$2")
}

kube_version_ldflags() { # kube_version_ldflags <module dir>: what hack/lib/version.sh would stamp
  local rel v t major minor pkg flags=""
  rel="$(module_release "$1" k8s.io/kubernetes)" || return 1
  read -r v t <<<"$rel"
  major="${v#v}"; major="${major%%.*}"
  minor="${v#v*.}"; minor="${minor%%.*}"
  # component-base serves the servers' --version and /version; client-go's serves kubectl's.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$t"
  done
  echo "$flags"
}

kube_router_version_ldflags() { # kube_router_version_ldflags <module dir>
  # Unset, kube-router prints an empty version and warns at every start that it can't parse it.
  local rel v t pkg=github.com/cloudnativelabs/kube-router/v2/pkg/version
  rel="$(module_release "$1" github.com/cloudnativelabs/kube-router/v2)" || return 1
  read -r v t <<<"$rel"
  echo "-X $pkg.Version=$v -X $pkg.BuildDate=$t"
}

build_go() { # build_go <module dir> <name> [--ldflags-from <function>] <packages...>
  local dir="$1" name="$2"; shift 2
  local ldfn="" key out
  if [[ "${1:-}" == --ldflags-from ]]; then ldfn="$2"; shift 2; fi
  # The ldflags recipe (the function's text) is part of the key, so a cached build needs no go call;
  # its values follow from go.mod. Without one the key is the files' alone, as before.
  key="$( { cat "$dir"/go.mod "$dir"/go.sum $(ls "$dir"/*.go 2>/dev/null || true)
            if [[ -n "$ldfn" ]]; then declare -f "$ldfn" module_release; fi; } | sha256sum | cut -c1-12)"
  out="$cache/bin/$name-$key"
  if [[ -f "$out/.complete" ]]; then
    log "$name: cached in $out"
  else
    log "$name: building $* (first time on this machine: several minutes)"
    local t0=$SECONDS ldflags="-s -w" extra
    if [[ -n "$ldfn" ]]; then extra="$("$ldfn" "$dir")"; ldflags+=" $extra"; fi
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    (cd "$dir" && GOFLAGS=-mod=readonly CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$out.tmp/" "$@")
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

build_tiled() {
  local req="$here/tiled/requirements.txt" key out
  key="$(key_of "$req")"
  out="$cache/tiled-$key"
  if [[ -f "$out/.complete" ]]; then
    log "tiled: cached in $out"
  else
    log "tiled: installing the server from PyPI"
    local t0=$SECONDS
    rm -rf "$out.tmp"
    "${PYTHON:-python3}" -m venv "$out.tmp"
    "$out.tmp/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    touch "$out.tmp/.complete"
    rm -rf "$out" && mv "$out.tmp" "$out"
    # venv scripts carry the absolute path of their interpreter: fix them for the final directory
    grep -rlI --null "$out.tmp" "$out/bin" | xargs -0 -r sed -i "s#$out.tmp#$out#g"
    log "tiled: ready in $((SECONDS - t0)) s"
  fi
  ln -sfn "$out" "$cache/tiled-current"
}

build_go "$here/go/etcd" etcd .
build_go "$here/go/kube" kube --ldflags-from kube_version_ldflags \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl \
  k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy
build_go "$here/go/helm" helm helm.sh/helm/v3/cmd/helm
build_go "$here/go/coredns" coredns github.com/coredns/coredns
build_go "$here/go/kube-router" kube-router --ldflags-from kube_router_version_ldflags \
  github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
build_go "$here/go/flux" flux github.com/fluxcd/source-controller github.com/fluxcd/kustomize-controller
build_kafka
build_tiled
echo "bin=$cache/bin/current kafka=$cache/kafka-current tiled=$cache/tiled-current"
