#!/usr/bin/env bash
# A real Kubernetes control plane on 127.0.0.1 for the `k8s` tests: etcd, kube-apiserver,
# kube-controller-manager (Job, garbage-collector, TTL controllers), kube-scheduler, and kwok as the
# kubelet of fake GPU nodes. No containers run; pods move through their phases as
# kwok-stages.yaml says.
#
#   k8s-testenv/controlplane.sh build   build or fetch the binaries once (cached, see below)
#   k8s-testenv/controlplane.sh start   build if needed, start, wait until ready; prints KUBECONFIG
#   k8s-testenv/controlplane.sh stop    stop everything started by `start`
#
# Binaries are cached in $TRAINING_HUB_K8S_CACHE (default ~/.cache/training-hub-k8s/bin), never in
# the repository: kube-* are built with `go build` from k8s.io/kubernetes (pinned in go.mod here),
# etcd too (its server module, the version k8s.io/kubernetes requires), kwok and toxiproxy (the
# fault tests' proxy, started by the tests) with `go install`.
# State (certificates, etcd data, logs, kubeconfig) lives in $TRAINING_HUB_K8S_STATE
# (default /tmp/training-hub-k8s). Authorization is RBAC: `kubeconfig` is an admin's,
# `kubeconfig-no-rights` (beside it) an authenticated user's with no role at all, and
# `kubeconfig-throttled` a user the tests grant rights and flow-control (API Priority and Fairness
# is on, as in any cluster; system:masters, the admin, is exempt from it).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${TRAINING_HUB_K8S_CACHE:-$HOME/.cache/training-hub-k8s}"
bin="$cache/bin"
state="${TRAINING_HUB_K8S_STATE:-/tmp/training-hub-k8s}"
KWOK_VERSION=v0.8.0
TOXIPROXY_VERSION=v2.12.0
ETCD_PORT=23790
APISERVER_PORT=16443

log() { echo "controlplane: $*" >&2; }
# shellcheck source=scripts/testbed.sh
source "$here/../scripts/testbed.sh"

build() {
  mkdir -p "$bin"
  local start=$SECONDS name
  # One binary per `go build`, so that each one's time is in the phase table; each later one
  # reuses the packages the earlier ones compiled (Go's build cache). -s -w: no symbol table or
  # DWARF, which only the linker's time would pay for.
  for name in kube-apiserver kube-controller-manager kube-scheduler; do
    [ -x "$bin/$name" ] && continue
    log "building $name"
    (cd "$here" && timed "go build $name" go build -ldflags "$(k8s_ldflags)" -o "$bin/$name" "k8s.io/kubernetes/cmd/$name")
  done
  if [ ! -x "$bin/kwok" ]; then
    log "building kwok $KWOK_VERSION"
    GOBIN="$bin" timed "go install kwok" go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  fi
  if [ ! -x "$bin/toxiproxy-server" ]; then  # the tests' fault proxy in front of the API server
    log "building toxiproxy $TOXIPROXY_VERSION"
    local gobin
    gobin="$(mktemp -d)"
    GOBIN="$gobin" timed "go install toxiproxy" go install -ldflags "-s -w" "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION"
    install -m 0755 "$gobin/server" "$bin/toxiproxy-server"
    rm -rf "$gobin"
  fi
  # etcd from the go.mod pin: the API server serves streaming watch lists (client-go's default
  # now, in kwok and the controllers) only on an etcd with RequestWatchProgress (3.5.13+, 3.6);
  # on an older one each informer falls back to LIST with a backoff, and a pod waited ~20 s to run.
  local etcd_version
  etcd_version="$(cd "$here" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)"
  local built
  built="$("$bin/etcd" --version 2>/dev/null || true)"  # whole, not piped: grep -q would cut etcd off
  if ! grep -qx "etcd Version: ${etcd_version#v}" <<<"$built"; then
    log "building etcd $etcd_version"
    (cd "$here" && timed "go build etcd" go build -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3)
  fi
  log "binaries ready in $bin ($((SECONDS - start))s)"
}

kubeconfig() {  # kubeconfig TOKEN: the loopback API server, as the user of that token
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://127.0.0.1:$APISERVER_PORT", certificate-authority: "$state/certs/apiserver.crt"}
users:
- name: user
  user: {token: "$1"}
contexts:
- name: local
  context: {cluster: local, user: user, namespace: default}
current-context: local
EOF
}

start() {
  build
  stop 2>/dev/null || true
  local start=$SECONDS
  rm -rf "$state"
  mkdir -p "$state"/{logs,pids,certs,etcd}
  local token no_rights_token throttled_token
  token="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  no_rights_token="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  throttled_token="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  # admin may do anything (system:masters); no-rights is authenticated but granted nothing by RBAC,
  # for the tests of a connection the API server forbids (403); throttled, for the tests of the API
  # server's own 429s.
  printf '%s\n' "$token,admin,admin,system:masters" "$no_rights_token,no-rights,no-rights" \
    "$throttled_token,throttled,throttled" >"$state/tokens.csv"
  openssl genrsa -out "$state/certs/sa.key" 2048 2>/dev/null
  openssl rsa -in "$state/certs/sa.key" -pubout -out "$state/certs/sa.pub" 2>/dev/null

  spawn etcd "$bin/etcd" --data-dir "$state/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "default=http://127.0.0.1:$((ETCD_PORT + 1))" --unsafe-no-fsync
  wait_for 30 etcd curl -sf "http://127.0.0.1:$ETCD_PORT/health"

  # Nodes are kwok's: no heartbeats, so neither the not-ready taint on creation nor the node
  # lifecycle controller that would evict pods from "silent" nodes.
  spawn kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
    --secure-port "$APISERVER_PORT" --cert-dir "$state/certs" --token-auth-file "$state/tokens.csv" \
    --authorization-mode RBAC --service-cluster-ip-range 10.96.0.0/16 \
    --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$state/certs/sa.pub" \
    --service-account-signing-key-file "$state/certs/sa.key" \
    --disable-admission-plugins TaintNodesByCondition,ServiceAccount \
    --kubelet-preferred-address-types InternalIP

  kubeconfig "$token" >"$state/kubeconfig"
  kubeconfig "$no_rights_token" >"$state/kubeconfig-no-rights"
  kubeconfig "$throttled_token" >"$state/kubeconfig-throttled"
  wait_for 90 kube-apiserver curl -skf -H "Authorization: Bearer $token" "https://127.0.0.1:$APISERVER_PORT/readyz"

  spawn kube-controller-manager "$bin/kube-controller-manager" --kubeconfig "$state/kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port 0 \
    --controllers '*,-node-lifecycle-controller,-serviceaccount-token-controller' \
    --service-account-private-key-file "$state/certs/sa.key"
  spawn kube-scheduler "$bin/kube-scheduler" --kubeconfig "$state/kubeconfig" --leader-elect=false \
    --bind-address 127.0.0.1 --secure-port 0
  spawn kwok "$bin/kwok" --kubeconfig "$state/kubeconfig" \
    --config "$here/kwok-stages.yaml" \
    --manage-all-nodes=false --manage-nodes-with-label-selector type=kwok \
    --node-ip 10.240.0.1 --cidr 10.244.0.0/16 --server-address 127.0.0.1:0
  wait_for 60 "the default namespace" curl -skf -H "Authorization: Bearer $token" \
    "https://127.0.0.1:$APISERVER_PORT/api/v1/namespaces/default"
  log "started in $((SECONDS - start))s; KUBECONFIG=$state/kubeconfig"
  echo "$state/kubeconfig"
}

stop() {
  [ -d "$state/pids" ] || return 0
  local pid
  for name in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
    [ -f "$state/pids/$name" ] || continue
    pid="$(cat "$state/pids/$name")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$state/pids/$name"
  done
}

case "${1:-}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 build|start|stop" >&2; exit 2 ;;
esac
