#!/usr/bin/env bash
# A real node for the loopback control plane (controlplane.sh): containerd, runc and CNI from
# Debian, a kubelet v1.34.2 and CoreDNS built with Go, and the images of docker/ built on a
# debootstrap base and loaded into the node. Training pods run for real on it, on the CPU; the node
# advertises `nvidia.com/gpu` as an extended resource, so the Jobs are those a GPU cluster gets.
#
#   k8s-testenv/real-node.sh packages  install the Debian packages it needs (apt-get)
#   k8s-testenv/real-node.sh build   install and build whatever is missing (cached, see below):
#                                    `binaries` (the kubelet, CoreDNS) and `images`, which CI runs apart
#   k8s-testenv/real-node.sh up      build if needed, start the control plane if it is not running,
#                                    start the node; the last line on stdout is one JSON object:
#     {"kubeconfig", "training_image", "airflow_image", "namespace", "pvc_claim", "host_path", "node_selector",
#      "netns" (the node's network namespace, as a /proc path), "node_ip" (this host reaches the
#      namespace there), "bridge_ip" (the pods reach it there: they have no other route)}
#   k8s-testenv/real-node.sh down    stop what `up` started, by PID, and put back the host settings
#
# Addresses: the node (containerd, the kubelet, CoreDNS, the pod bridge) lives in a network
# namespace of its own, held by one process. The host reaches it over a veth pair whose two ends
# are 10.250.0.1 (host) and 10.250.0.2 (the node IP); the node reaches the API server on the host's
# loopback through a relay over a Unix socket. The node has no default route, so no pod can send
# anything off the machine. dockerd (for the image builds, which need PyPI) runs in the host's
# namespace with its own containerd, and touches neither iptables nor the bridge nor ip_forward.
#
# Cached in $TRAINING_HUB_K8S_CACHE (default ~/.cache/training-hub-k8s): the binaries (bin/), the
# debootstrap root file system (images/), Docker's data (docker/) and the node's image store
# (containerd/). State (logs, pids, the kubelet's and containerd's state, the host settings found
# at `up`, the PV's directory) lives in $TRAINING_HUB_NODE_STATE (default /tmp/training-hub-node).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${TRAINING_HUB_K8S_CACHE:-$HOME/.cache/training-hub-k8s}"
bin="$cache/bin"
state="${TRAINING_HUB_NODE_STATE:-/tmp/training-hub-node}"
cp_state="${TRAINING_HUB_K8S_STATE:-/tmp/training-hub-k8s}"
COREDNS_VERSION=v1.14.7
APISERVER_PORT=16443
NODE=real-node
HOST_IP=10.250.0.1
NODE_IP=10.250.0.2
BRIDGE=thub0
BRIDGE_IP=10.244.0.1   # the pods' subnet is 10.244.0.0/24; CoreDNS answers on this address
GPUS=4                 # the node's advertised nvidia.com/gpu
NAMESPACE=training
TRAINING_IMAGE=training-hub/train:dev
AIRFLOW_IMAGE=training-hub/airflow:dev
BASE_IMAGE=training-hub/debian-python:bookworm
AIRFLOW_BASE_IMAGE=training-hub/debian-python-airflow:bookworm
PAUSE_IMAGE=training-hub/pause:3.10
# Host settings that the kubelet (the first three) or a container runtime may change; `down`
# writes back the values `up` found.
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables)
PACKAGES=(docker.io containerd runc debootstrap containernetworking-plugins iptables conntrack socat
  ethtool iproute2 ebtables gcc libc6-dev)

log() { echo "real-node: $*" >&2; }
# shellcheck source=scripts/testbed.sh
source "$repo/scripts/testbed.sh"

node_net() { echo "/proc/$(cat "$state/pids/netns")/ns/net"; }  # the node's network namespace
in_node() { nsenter --net="$(node_net)" "$@"; }
token() { awk '/token:/ {gsub(/[{}"]/, ""); print $NF}' "$cp_state/kubeconfig"; }
ctr_node() { ctr --address "$state/containerd/containerd.sock" --namespace k8s.io "$@"; }

install_packages() {
  local missing=()
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build_binaries() {  # after controlplane.sh build: the kubelet then reuses its compiled packages
  if [ ! -x "$bin/kubelet" ]; then
    log "building the kubelet (with the control plane's Go module)"
    (cd "$here" && timed "go build kubelet" go build -ldflags "$(k8s_ldflags)" -o "$bin/kubelet" k8s.io/kubernetes/cmd/kubelet)
  fi
  if [ ! -x "$bin/coredns" ]; then
    log "building CoreDNS $COREDNS_VERSION (about 3 minutes on 2 cores)"
    GOBIN="$bin" timed "go install coredns" go install -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
  fi
  if [ ! -x "$bin/weed" ]; then  # the object storage tests' S3 server (tests/s3_server.py starts it)
    log "building SeaweedFS (about 4 minutes on 2 cores)"
    (cd "$here/s3server" && timed "go build weed" go build -ldflags "-s -w" -o "$bin/weed" github.com/seaweedfs/seaweedfs/weed)
  fi
}

start_dockerd() {
  [ -f "$state/pids/dockerd" ] && kill -0 "$(cat "$state/pids/dockerd")" 2>/dev/null && return 0
  mkdir -p "$state"/{logs,pids} "$cache/docker"
  record_host
  # Builds use the host's network (PyPI); nothing else: no bridge, no iptables, no ip_forward.
  spawn dockerd dockerd --data-root "$cache/docker" --exec-root "$state/docker" --pidfile "$state/docker.pid" \
    --host "unix://$state/docker.sock" --bridge none --iptables=false --ip6tables=false --ip-forward=false \
    --ip-masq=false --storage-driver overlay2
  wait_for 60 dockerd docker -H "unix://$state/docker.sock" version
}

docker_() { docker -H "unix://$state/docker.sock" "$@"; }

base_images() {  # Debian bookworm with Python 3.11 in a venv on PATH, this machine's CAs trusted
  docker_ image inspect "$BASE_IMAGE" >/dev/null 2>&1 && docker_ image inspect "$AIRFLOW_BASE_IMAGE" >/dev/null 2>&1 \
    && return 0
  local rootfs="$cache/images/rootfs"
  if [ ! -f "$cache/images/rootfs.tar" ]; then
    log "debootstrap bookworm (about 2 minutes)"
    rm -rf "$rootfs"
    mkdir -p "$rootfs"
    timed debootstrap debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
      http://deb.debian.org/debian >"$state/logs/debootstrap.log" 2>&1
    # pip inside the builds reaches PyPI only through the CAs this machine trusts; they enter the
    # base image here and are never part of the repository.
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$rootfs" update-ca-certificates >/dev/null
    chroot "$rootfs" python3 -m venv /opt/python
    chroot "$rootfs" useradd --uid 50000 --gid 0 --create-home airflow
    mkdir -p "$rootfs/opt/airflow"
    chroot "$rootfs" chown -R airflow:root /opt/python /opt/airflow
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$cache/images/rootfs.tar.part" .
    mv "$cache/images/rootfs.tar.part" "$cache/images/rootfs.tar"
    rm -rf "$rootfs"
  fi
  local env=(--change "ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    --change "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" --change "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt")
  docker_ import "${env[@]}" "$cache/images/rootfs.tar" "$BASE_IMAGE" >/dev/null
  # As apache/airflow: the user airflow (uid 50000, gid 0), AIRFLOW_HOME=/opt/airflow.
  docker_ import "${env[@]}" --change "ENV AIRFLOW_HOME=/opt/airflow" --change "USER airflow" \
    --change "WORKDIR /opt/airflow" "$cache/images/rootfs.tar" "$AIRFLOW_BASE_IMAGE" >/dev/null
}

pause_image() {  # the pod sandbox: Kubernetes' pause.c, static, FROM scratch
  docker_ image inspect "$PAUSE_IMAGE" >/dev/null 2>&1 && return 0
  local src ctx
  src="$(cd "$here" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
  ctx="$(mktemp -d)"
  gcc -Os -static -o "$ctx/pause" "$src"
  printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$ctx/Dockerfile"
  DOCKER_BUILDKIT=0 docker_ build -q -t "$PAUSE_IMAGE" "$ctx" >/dev/null
  rm -rf "$ctx"
}

build_image() {  # build_image NAME DOCKERFILE BUILD-ARG...: log its time and size
  local name=$1 dockerfile=$2 started=$SECONDS
  shift 2
  local args=()
  for arg in "$@"; do args+=(--build-arg "$arg"); done
  log "building $name from $dockerfile"
  # The legacy builder: BuildKit would fetch the `# syntax` frontend from a registry.
  timed "image $name" env DOCKER_BUILDKIT=0 docker -H "unix://$state/docker.sock" build --network host \
    -f "$repo/$dockerfile" -t "$name" "${args[@]}" "$repo" >"$state/logs/build-${name//[\/:]/_}.log" 2>&1 \
    || { tail -n 40 "$state/logs/build-${name//[\/:]/_}.log" >&2; exit 1; }
  log "built $name in $((SECONDS - started))s, $(docker_ image inspect -f '{{.Size}}' "$name" | awk '{printf "%.0f MB", $1/1e6}')"
}

build_images() {
  start_dockerd
  base_images
  pause_image
  build_image "$TRAINING_IMAGE" docker/training/Dockerfile "BASE_IMAGE=$BASE_IMAGE" INSTRUCTLAB_TRAINING_EXTRAS=
  build_image "$AIRFLOW_IMAGE" docker/airflow/Dockerfile "BASE_IMAGE=$AIRFLOW_BASE_IMAGE"
  # A rebuild leaves the image it replaced untagged (6.8 GB for the training image's): drop it.
  log "pruned the replaced images: $(docker_ image prune -f | tail -n 1)"
}

load_images() {  # into the node's containerd, unless the same Docker image is there already
  local image id ids=()
  for image in "$PAUSE_IMAGE" "$TRAINING_IMAGE" "$AIRFLOW_IMAGE"; do
    id="$(docker_ image inspect -f '{{.Id}}' "$image")"
    ids+=("$id")
    if ctr_node images ls "name==docker.io/$image" | grep -q "training-hub.docker-id=$id"; then
      continue
    fi
    local started=$SECONDS began
    began="$(date +%s.%N)"
    if ! docker_ save "$image" | ctr_node images import --no-unpack=false - >/dev/null 2>"$state/logs/import.err"; then
      # Seen once after a rebuild: "parent snapshot ... does not exist", containerd's GC having
      # freed a layer of the image it replaced; the same import then went through.
      log "importing $image failed ($(tail -n 1 "$state/logs/import.err")); once more"
      docker_ save "$image" | ctr_node images import --no-unpack=false - >/dev/null
    fi
    ctr_node images label "docker.io/$image" "training-hub.docker-id=$id" >/dev/null
    phase_record "load $image into the node" "$began"
    log "loaded $image into the node in $((SECONDS - started))s"
  done
  # The CRI plugin also names each image by its id (a Docker image's id is its config digest): a
  # replaced image's id would keep its 7 GB of content and snapshots. containerd's GC frees them
  # once no name is left.
  local name
  for name in $(ctr_node images ls -q | grep '^sha256:' || true); do
    printf '%s\n' "${ids[@]}" | grep -qxF "$name" || ctr_node images rm --sync "$name" >/dev/null
  done
}

iptables_rules() { iptables-save | sed '/^#/d'; }  # without the dated comments

record_host() {  # what `down` puts back: once, before anything of ours runs (`build` or `up`)
  [ -f "$state/host/sysctl-before" ] && return 0
  mkdir -p "$state/host"
  { sysctl -a 2>/dev/null || true; } | sort >"$state/host/sysctl-before"  # some keys are unreadable
  for key in "${SYSCTLS[@]}"; do sysctl -n "$key" 2>/dev/null >"$state/host/$key" || true; done
  iptables_rules >"$state/host/iptables-before"
  awk '{print $5}' /proc/self/mountinfo | sort >"$state/host/mounts-before"
}

netns_made() { [ "$(readlink "$(node_net)")" != "$(readlink /proc/$$/ns/net)" ]; }

network() {  # the node's namespace, its veth to the host, and the pods' bridge
  spawn netns unshare --net sleep infinity
  wait_for 10 "the node's network namespace" netns_made
  ip link add thub-host type veth peer name thub-node
  ip link set thub-node netns "$(cat "$state/pids/netns")"
  ip addr add "$HOST_IP/30" dev thub-host
  ip link set thub-host up
  in_node ip link set lo up
  in_node ip addr add "$NODE_IP/30" dev thub-node
  in_node ip link set thub-node up
  in_node ip link add "$BRIDGE" type bridge
  in_node ip addr add "$BRIDGE_IP/24" dev "$BRIDGE"
  in_node ip link set "$BRIDGE" up
}

node_config() {
  mkdir -p "$state/cni" "$state/containerd" "$state/kubelet" "$cache/containerd" "$state/pod-logs"
  cat >"$state/cni/10-pods.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "pods", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": false, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24", "rangeStart": "10.244.0.10"}]],
            "dataDir": "$state/cni/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}},
  {"type": "loopback"}
]}
EOF
  # restrict_oom_score_adj: root here may not lower oom_score_adj; without it every sandbox fails.
  cat >"$state/containerd/config.toml" <<EOF
version = 2
root = "$cache/containerd"
state = "$state/containerd/state"
[grpc]
  address = "$state/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$state/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
EOF
  cat >"$state/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "https://127.0.0.1:$APISERVER_PORT", certificate-authority: "$cp_state/certs/apiserver.crt"}
users:
- name: node
  user: {token: "$(token)"}
contexts:
- name: local
  context: {cluster: local, user: node}
current-context: local
EOF
  : >"$state/resolv.conf"  # pods resolve cluster names only
  cat >"$state/Corefile" <<EOF
.:53 {
    bind $BRIDGE_IP
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $state/kubeconfig local
        pods insecure
    }
}
EOF
  # The disk is large and busy: the default thresholds would evict pods and delete images mid-test.
  cat >"$state/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$state/containerd/containerd.sock
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
clusterDNS: [$BRIDGE_IP]
clusterDomain: cluster.local
resolvConf: $state/resolv.conf
podLogsDir: $state/pod-logs
evictionHard: {nodefs.available: "1%", imagefs.available: "1%", memory.available: "100Mi"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
}

control_plane() {  # the running control plane, or one started here (and stopped by `down`)
  if [ -f "$cp_state/kubeconfig" ] && api GET /readyz >/dev/null 2>&1; then
    return 0
  fi
  log "starting the control plane"
  bash "$here/controlplane.sh" start >/dev/null
  touch "$state/started-control-plane"
}

api() {  # api METHOD PATH [BODY [CONTENT-TYPE]]: the API server, as the admin
  local args=(-sSf --max-time 10 --cacert "$cp_state/certs/apiserver.crt" -H "Authorization: Bearer $(token)" -X "$1")
  [ $# -ge 3 ] && args+=(-H "Content-Type: ${4:-application/json}" --data "$3")
  curl "${args[@]}" "https://127.0.0.1:$APISERVER_PORT$2"
}
pv_gone() { ! api GET /api/v1/persistentvolumes/training-real-node; }
pvc_bound() { api GET "/api/v1/namespaces/$NAMESPACE/persistentvolumeclaims/training" | grep -q '"phase": "Bound"'; }

node_ready() {
  api GET "/api/v1/nodes/$NODE" | python3 -c 'import json,sys; n=json.load(sys.stdin); sys.exit(not any(c["type"]=="Ready" and c["status"]=="True" for c in n["status"]["conditions"]))'
}

volume() {  # a ReadWriteMany PV on a host directory, and its claim in $NAMESPACE
  mkdir -p "$state/pv"
  # The training image runs as uid 1000: the directory is its, as an NFS export would be made
  # for the pods' uid (docs/kubernetes.md, "Volume permissions").
  chown 1000:1000 "$state/pv"
  api POST /api/v1/namespaces "{\"metadata\": {\"name\": \"$NAMESPACE\"}}" >/dev/null 2>&1 || true
  api DELETE "/api/v1/namespaces/$NAMESPACE/persistentvolumeclaims/training" >/dev/null 2>&1 || true
  api DELETE /api/v1/persistentvolumes/training-real-node >/dev/null 2>&1 || true
  wait_for 30 "the old PV to go" pv_gone
  api POST /api/v1/persistentvolumes "{\"metadata\": {\"name\": \"training-real-node\"}, \"spec\": {
    \"capacity\": {\"storage\": \"20Gi\"}, \"accessModes\": [\"ReadWriteMany\"], \"storageClassName\": \"real-node\",
    \"persistentVolumeReclaimPolicy\": \"Retain\", \"hostPath\": {\"path\": \"$state/pv\", \"type\": \"Directory\"}}}" >/dev/null
  api POST "/api/v1/namespaces/$NAMESPACE/persistentvolumeclaims" "{\"metadata\": {\"name\": \"training\"}, \"spec\": {
    \"accessModes\": [\"ReadWriteMany\"], \"storageClassName\": \"real-node\", \"volumeName\": \"training-real-node\",
    \"resources\": {\"requests\": {\"storage\": \"20Gi\"}}}}" >/dev/null
  wait_for 30 "the PVC to bind" pvc_bound
}

up() {
  local started=$SECONDS
  if [ -f "$state/pids/kubelet" ] && kill -0 "$(cat "$state/pids/kubelet")" 2>/dev/null; then
    log "already up; run down first"
    exit 1
  fi
  mkdir -p "$state"/{logs,pids,host}
  record_host
  install_packages
  mkdir -p "$bin"
  build_binaries
  build_images
  control_plane
  network
  node_config
  spawn apiserver-relay-host socat "UNIX-LISTEN:$state/apiserver.sock,fork,unlink-early" "TCP:127.0.0.1:$APISERVER_PORT"
  wait_for 10 "the API server relay" test -S "$state/apiserver.sock"
  # nsenter, not in_node: nsenter execs its command, so each PID in $state/pids is the daemon's own.
  spawn apiserver-relay-node nsenter --net="$(node_net)" socat "TCP-LISTEN:$APISERVER_PORT,bind=127.0.0.1,fork,reuseaddr" "UNIX-CONNECT:$state/apiserver.sock"
  spawn containerd nsenter --net="$(node_net)" containerd --config "$state/containerd/config.toml"
  wait_for 30 containerd ctr_node version
  load_images
  spawn coredns nsenter --net="$(node_net)" "$bin/coredns" -conf "$state/Corefile"
  spawn kubelet nsenter --net="$(node_net)" "$bin/kubelet" --config "$state/kubelet-config.yaml" --kubeconfig "$state/kubeconfig" \
    --root-dir "$state/kubelet" --hostname-override "$NODE" --node-ip "$NODE_IP" \
    --node-labels "training-hub.test/node=real"
  wait_for 120 "the node to be Ready" node_ready
  # A node-level extended resource (the Kubernetes task "Advertise Extended Resources for a Node").
  api PATCH "/api/v1/nodes/$NODE/status" "[{\"op\": \"add\", \"path\": \"/status/capacity/nvidia.com~1gpu\", \"value\": \"$GPUS\"}]" \
    application/json-patch+json >/dev/null
  volume
  log "up in $((SECONDS - started))s; logs in $state/logs"
  python3 - "$cp_state/kubeconfig" "$TRAINING_IMAGE" "$AIRFLOW_IMAGE" "$NAMESPACE" "$state/pv" "$(node_net)" "$NODE_IP" \
    "$BRIDGE_IP" <<'EOF'
import json, sys
kubeconfig, training, airflow, namespace, host_path, netns, node_ip, bridge_ip = sys.argv[1:]
print(json.dumps({"kubeconfig": kubeconfig, "training_image": training, "airflow_image": airflow,
                  "namespace": namespace, "pvc_claim": "training", "host_path": host_path,
                  "node_selector": {"training-hub.test/node": "real"}, "netns": netns, "node_ip": node_ip, "bridge_ip": bridge_ip}))
EOF
}

stop_pid() {  # stop_pid NAME: SIGTERM, 10 s, SIGKILL
  [ -f "$state/pids/$1" ] || return 0
  local pid
  pid="$(cat "$state/pids/$1")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$state/pids/$1"
}

down() {
  [ -d "$state/pids" ] || { log "not up"; return 0; }
  # The pods first, through the kubelet, so their containers stop and their mounts go.
  if [ -f "$state/pids/kubelet" ] && [ -f "$cp_state/kubeconfig" ]; then
    api DELETE "/api/v1/namespaces/$NAMESPACE/persistentvolumeclaims/training" >/dev/null 2>&1 || true
    api DELETE /api/v1/persistentvolumes/training-real-node >/dev/null 2>&1 || true
    api DELETE "/api/v1/pods?fieldSelector=spec.nodeName=$NODE" >/dev/null 2>&1 || true
  fi
  for name in kubelet coredns; do stop_pid "$name"; done
  # The containers' shims outlive containerd by design: they are ours (their socket is in $state).
  # The containers go too (the store is cached across runs), so that their snapshots don't pin
  # the images that a later `up` replaces.
  if [ -f "$state/pids/containerd" ]; then
    ctr_node tasks ls -q 2>/dev/null | while read -r task; do ctr_node tasks delete --force "$task" >/dev/null 2>&1 || true; done
    ctr_node containers ls -q 2>/dev/null | while read -r container; do ctr_node containers rm "$container" >/dev/null 2>&1 || true; done
  fi
  stop_pid containerd
  local pid
  for pid in $(pgrep -f "containerd-shim.*-address $state/containerd/containerd.sock" || true); do kill -9 "$pid" 2>/dev/null || true; done
  for name in apiserver-relay-node apiserver-relay-host dockerd netns; do stop_pid "$name"; done
  for pid in $(pgrep -f "containerd-shim.*$state/docker" || true); do kill -9 "$pid" 2>/dev/null || true; done
  ip link del thub-host 2>/dev/null || true
  # Mounts made since `up` (pods' volumes, overlays, namespaces), and any left under our own
  # directories by an earlier run that failed half-way, innermost first.
  { if [ -f "$state/host/mounts-before" ]; then
      awk '{print $5}' /proc/self/mountinfo | sort | comm -13 "$state/host/mounts-before" -
    fi
    awk -v state="$state/" -v cache="$cache/" 'index($5, state) == 1 || index($5, cache) == 1 {print $5}' /proc/self/mountinfo
  } | sort -ru | while read -r target; do umount -l "$target" 2>/dev/null || true; done
  for key in "${SYSCTLS[@]}"; do
    [ -s "$state/host/$key" ] && sysctl -qw "$key=$(cat "$state/host/$key")" 2>/dev/null || true
  done
  if [ -f "$state/host/iptables-before" ] && ! diff -q "$state/host/iptables-before" <(iptables_rules) >/dev/null; then
    log "putting back iptables"
    iptables-restore <"$state/host/iptables-before"
  fi
  # The kubelet's cgroups (cgroupfs driver), deepest first, once their processes are gone.
  find /sys/fs/cgroup/*/kubepods -depth -type d -exec rmdir {} + 2>/dev/null || true
  rm -rf "$state/host"  # the next build or up records the host afresh
  if [ -f "$state/started-control-plane" ]; then
    bash "$here/controlplane.sh" stop
    rm -f "$state/started-control-plane"
  fi
  log "down"
}

case "${1:-}" in
  packages) install_packages ;;
  build) install_packages; mkdir -p "$bin" "$state"/{logs,pids}; build_binaries; build_images ;;
  binaries) mkdir -p "$bin"; build_binaries ;;
  images) install_packages; mkdir -p "$state"/{logs,pids}; build_images ;;
  up) up ;;
  down) down ;;
  *) echo "usage: $0 packages|build|binaries|images|up|down" >&2; exit 2 ;;
esac
