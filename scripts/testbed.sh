# Sourced by the test beds (k8s-testenv/controlplane.sh, k8s-testenv/real-node.sh,
# scripts/deployed-airflow.sh), which define log() and $state, keep their processes' logs in
# $state/logs and their PIDs in $state/pids.

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
