#!/usr/bin/env bash
# Airflow as it runs in production, on loopback, for the tests and for trying DAGs by hand:
# PostgreSQL (Debian's packages) as the metadata database, `airflow scheduler` with the
# LocalExecutor, `airflow dag-processor`, `airflow triggerer` and `airflow api-server`.
#
#   bash scripts/deployed-airflow.sh start   start everything, wait until ready; the last line of
#                                            stdout is the path of an env file to source
#   bash scripts/deployed-airflow.sh stop    stop what `start` started, by PID
#   bash scripts/deployed-airflow.sh restart NAME   start one of its Airflow processes again
#
# It uses the repository's .venv (scripts/bootstrap.sh). The DAG folder is
# $AIRFLOW__CORE__DAGS_FOLDER, else dags/. State (database, logs, AIRFLOW_HOME, the env file) lives
# in $TRAINING_HUB_AIRFLOW_STATE (default /tmp/training-hub-airflow). The API server listens on
# 127.0.0.1:$TRAINING_HUB_AIRFLOW_PORT (default 28080). One user, `admin` (simple auth manager), logs
# in with the password in $TRAINING_HUB_AIRFLOW_STATE/passwords.json, made at each start: in the
# UI's login form, or for the REST API with `POST /auth/token` ({"username", "password"}).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
state="${TRAINING_HUB_AIRFLOW_STATE:-/tmp/training-hub-airflow}"
api_port="${TRAINING_HUB_AIRFLOW_PORT:-28080}"
pg_port="${TRAINING_HUB_POSTGRES_PORT:-25432}"
# Tasks running at once (deferred ones do not count). Each task process parses its DAG file on
# start, which is CPU work: with Airflow's default of 32 on 2 cores, 20 tasks starting together
# each took over the 30 s DAG-import timeout and were rescheduled again and again.
parallelism="${TRAINING_HUB_AIRFLOW_PARALLELISM:-$((2 * $(nproc)))}"
airflow="$repo/.venv/bin/airflow"

log() { echo "deployed-airflow: $*" >&2; }
# shellcheck source=scripts/testbed.sh
source "$repo/scripts/testbed.sh"

pg_bin() {  # Debian's PostgreSQL: its server binaries are not on PATH
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [ -n "$dir" ] || { log "PostgreSQL is not installed (Debian: apt-get install postgresql)"; exit 1; }
  echo "$dir"
}

as_postgres() {  # PostgreSQL refuses to run as root
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

spawn() {  # spawn NAME COMMAND...: in the background, in its own process group, logged
  local name=$1
  shift
  setsid "$@" >"$state/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$state/pids/$name"
}

start() {
  stop 2>/dev/null || true
  local start=$SECONDS bin password secret
  bin="$(pg_bin)"
  rm -rf "$state"
  mkdir -p "$state"/{logs,pids,home}
  password="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  secret="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
  python3 -c 'import json, secrets, sys; json.dump({"admin": secrets.token_urlsafe(12)}, open(sys.argv[1], "w"))' \
    "$state/passwords.json"

  install -d -o "$( [ "$(id -u)" -eq 0 ] && echo postgres || id -un)" "$state/postgres" "$state/postgres-socket"
  printf '%s\n' "$password" >"$state/pgpass" && chmod 0644 "$state/pgpass"
  as_postgres "$bin/initdb" --pgdata "$state/postgres/data" --username airflow --pwfile "$state/pgpass" \
    --auth scram-sha-256 >"$state/logs/initdb.log" 2>&1
  rm -f "$state/pgpass"
  as_postgres "$bin/pg_ctl" --pgdata "$state/postgres/data" --log "$state/postgres/postgres.log" --wait \
    --options "-c listen_addresses=127.0.0.1 -c port=$pg_port -c unix_socket_directories=$state/postgres-socket" \
    start >/dev/null
  PGPASSWORD="$password" wait_for 30 PostgreSQL "$bin/pg_isready" -h 127.0.0.1 -p "$pg_port" -U airflow
  PGPASSWORD="$password" "$bin/createdb" -h 127.0.0.1 -p "$pg_port" -U airflow airflow

  cat >"$state/env" <<ENV
export AIRFLOW_HOME="$state/home"
export AIRFLOW__CORE__DAGS_FOLDER="${AIRFLOW__CORE__DAGS_FOLDER:-$repo/dags}"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
export AIRFLOW__CORE__PARALLELISM=$parallelism
export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg2://airflow:$password@127.0.0.1:$pg_port/airflow"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$api_port/execution/"
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT=$api_port
export AIRFLOW__API__BASE_URL="http://127.0.0.1:$api_port"
export AIRFLOW__API_AUTH__JWT_SECRET="$secret"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$state/passwords.json"
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=5
export AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL=5
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ENV
  # shellcheck disable=SC1091
  source "$state/env"
  if ! "$airflow" db migrate >"$state/logs/db-migrate.log" 2>&1; then
    log "airflow db migrate failed:"
    tail -n 30 "$state/logs/db-migrate.log" >&2
    exit 1
  fi
  spawn api-server "$airflow" api-server --host 127.0.0.1 --port "$api_port"
  for name in scheduler dag-processor triggerer; do spawn "$name" "$airflow" "$name"; done
  wait_for 120 "the API server" curl -sf "http://127.0.0.1:$api_port/api/v2/version"
  log "started in $((SECONDS - start))s; source $state/env to use it"
  echo "$state/env"
}

stop_pid() {  # stop_pid NAME: SIGTERM its process group, SIGKILL after 20 s
  local file="$state/pids/$1" pid
  [ -f "$file" ] || return 0
  pid="$(cat "$file")"
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$file"
}

stop() {
  [ -d "$state" ] || return 0
  for name in triggerer dag-processor scheduler api-server; do stop_pid "$name"; done
  if [ -f "$state/postgres/data/postmaster.pid" ]; then
    as_postgres "$(pg_bin)/pg_ctl" --pgdata "$state/postgres/data" --mode fast --wait stop >/dev/null || true
  fi
}

restart() {  # restart NAME: one Airflow process again (after a test killed it)
  case "$1" in scheduler|dag-processor|triggerer|api-server) ;; *) log "unknown process $1"; exit 2 ;; esac
  # shellcheck disable=SC1091
  source "$state/env"
  stop_pid "$1"
  if [ "$1" = api-server ]; then spawn "$1" "$airflow" api-server --host 127.0.0.1 --port "$api_port"
  else spawn "$1" "$airflow" "$1"; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) restart "${2:?usage: $0 restart scheduler|dag-processor|triggerer|api-server}" ;;
  *) echo "usage: $0 start|stop|restart NAME" >&2; exit 2 ;;
esac
