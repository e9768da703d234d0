# Sourced by the test beds (k8s-testenv/controlplane.sh, k8s-testenv/real-node.sh,
# scripts/deployed-airflow.sh), which define log() and $state, keep their processes' logs in
# $state/logs and their PIDs in $state/pids.

timed() {  # timed NAME COMMAND...: run COMMAND (an executable, not a function: `||` would switch
  # off its set -e) and record it as a phase
  local name=$1 began status=0
  shift
  began="$(date +%s.%N)"
  "$@" || status=$?
  phase_record "$name" "$began" "$status"
  return "$status"
}

phase_record() {  # phase_record NAME BEGAN [STATUS]: with TRAINING_HUB_PHASES set, append the phase
  # that began at BEGAN (date +%s.%N) and ends now, for the table that .ci/run prints (scripts/phases.py)
  [ -n "${TRAINING_HUB_PHASES:-}" ] || return 0
  printf '%s\t%s\t%s\t%s\n' "$2" "$(date +%s.%N)" "${3:-0}" "$1" >>"$TRAINING_HUB_PHASES"
}

k8s_ldflags() {  # the link flags of the Kubernetes binaries (control plane, kubelet): no symbol
  # table or DWARF, which only the linker's time would pay for, and the version of k8s-testenv/go.mod's
  # pin, which a build from a module (not a git tree) would not report
  local version
  version="$(cd "$(dirname "${BASH_SOURCE[0]}")/../k8s-testenv" && go list -m -f '{{.Version}}' k8s.io/kubernetes)"
  echo "-s -w -X k8s.io/component-base/version.gitVersion=$version"
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: until COMMAND succeeds, else show the logs and exit 1
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "timed out waiting for $what; logs in $state/logs"
      tail -n 30 "$state"/logs/*.log >&2 || true
      exit 1
    fi
    sleep 0.5
  done
}

spawn() {  # spawn NAME COMMAND...: run in the background, log to $state/logs/NAME.log
  local name=$1
  shift
  "$@" >"$state/logs/$name.log" 2>&1 &
  echo $! >"$state/pids/$name"
}
