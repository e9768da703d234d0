"""dpo_retrain: when the data team publishes preference pairs, SFT then DPO on the SFT checkpoint,
and a check that the model now prefers the chosen replies of pairs it never trained on."""

from __future__ import annotations

import os
from importlib.resources import files

from airflow.configuration import AIRFLOW_HOME
from airflow.sdk import Asset, Param, dag, task

from airflow_provider_training_hub.hooks.training_hub import TrainingHubHook
from airflow_provider_training_hub.operators import DPOTrainOperator, SFTTrainOperator, ValidateMessagesDataOperator
from airflow_provider_training_hub.operators.params import algorithm_params

WORK_DIR = os.path.join(AIRFLOW_HOME, "training_hub")
SAMPLES = files("airflow_provider_training_hub") / "samples"
PREFERENCE_PAIRS = Asset("training_hub_preference_pairs")  # its events' extra names the pairs' data_path
ALIGNED_MODEL = Asset("training_hub_dpo_model")  # its events' extra holds the checkpoint
DPO_FORM = ["loss_type", "beta", "learning_rate", "num_epochs", "effective_batch_size"]

DOC = """
### SFT, then DPO, then a check on held-back pairs

Runs when the data team's preference pairs arrive as the `training_hub_preference_pairs` Asset
(its event's `extra["data_path"]`), or from the trigger form, on the bundled sample: 24 pairs that
prefer `"BUDAPEST. (Heron)"` to `"The capital of Hungary is Budapest."`.

1. **validate_pairs** checks the pairs (each problem with its line, field and reason) and
   **validate_chats** the SFT data (the bundled messages sample).
2. **prepare_model** builds SmolLM2-135M-Instruct offline (or takes a model directory).
3. **train_sft** fine-tunes it; **train_dpo** preference-tunes the SFT checkpoint (`dpo()`, the
   `pytorch` backend: this machine's CPU, or the GPUs of the connection's target).
4. **margin_before** / **margin_after**: log p(chosen) - log p(rejected) of the held-back pairs,
   under the SFT checkpoint and the DPO one; **check** fails the run unless the margin rose
   above 0.
"""


@dag(
    dag_id="dpo_retrain",
    schedule=[PREFERENCE_PAIRS],
    catchup=False,
    doc_md=DOC,
    tags=["training-hub", "dpo"],
    render_template_as_native_obj=True,
    params={
        "model": Param("smollm2", type="string", title="Model",
                       description="smollm2, or the path of a Hugging Face model directory."),
        "pairs": Param(str(SAMPLES / "dpo_sample.jsonl"), type="string", title="Preference pairs",
                       description="Used when no Asset event triggered the run."),
        "held_back": Param(str(SAMPLES / "dpo_heldout.jsonl"), type="string", title="Held-back pairs",
                           description="Pairs the check measures the margin on; never trained on."),
        "sft_epochs": Param(1, type="integer", minimum=1, title="SFT epochs"),
        **algorithm_params("dpo", DPO_FORM, learning_rate=5e-5, num_epochs=3, effective_batch_size=8),
    },
)
def dpo_retrain():
    @task
    def pairs_path(params: dict, triggering_asset_events=None) -> str:
        events = triggering_asset_events[PREFERENCE_PAIRS] if triggering_asset_events else []
        return events[-1].extra["data_path"] if events else params["pairs"]

    @task
    def prepare_model(params: dict) -> str:
        if params["model"] != "smollm2":
            return params["model"]
        target = os.path.join(WORK_DIR, "models", "smollm2")
        if os.path.isfile(os.path.join(target, "config.json")):
            return target
        return TrainingHubHook().make_model("smollm2", target)

    pairs = ValidateMessagesDataOperator(
        task_id="validate_pairs", data_format="preference", data_path=pairs_path(),
        output_path=os.path.join(WORK_DIR, "data", "{{ run_id }}", "pairs.jsonl"),
    )
    chats = ValidateMessagesDataOperator(
        task_id="validate_chats", data_path=str(SAMPLES / "sft_sample.jsonl"),
        output_path=os.path.join(WORK_DIR, "data", "{{ run_id }}", "chats.jsonl"),
    )
    sft = SFTTrainOperator(
        task_id="train_sft", backend="pytorch", model_path=prepare_model(), data_path=chats.output["data_path"],
        num_epochs="{{ params.sft_epochs }}", learning_rate=1e-5, effective_batch_size=8, max_seq_len=512,
        accelerate_full_state_at_epoch=False,
    )
    dpo = DPOTrainOperator(
        task_id="train_dpo", backend="pytorch", model_path=sft.output["checkpoint"],
        data_path=pairs.output["data_path"], accelerate_full_state_at_epoch=False, save_total_limit=1,
        outlets=[ALIGNED_MODEL], **{name: "{{ params.%s }}" % name for name in DPO_FORM},
    )

    @task
    def margin(model_dir: str, params: dict) -> dict:
        found = TrainingHubHook().preference_margins(model_dir, params["held_back"])
        print(f"{model_dir}: mean margin {found['mean_margin']:.3f}, chosen preferred in "
              f"{found['preferred']} of {found['pairs']} held-back pairs")
        return found

    @task
    def check(before: dict, after: dict) -> dict:
        """DPO must have made the chosen replies the likelier ones on pairs it never saw."""
        verdict = {"before": before["mean_margin"], "after": after["mean_margin"],
                   "preferred_before": before["preferred"], "preferred_after": after["preferred"]}
        if not after["mean_margin"] > max(before["mean_margin"], 0.0):
            raise ValueError(f"DPO did not make the held-back chosen replies likelier: {verdict}")
        return verdict

    before = margin.override(task_id="margin_before")(sft.output["checkpoint"])
    after = margin.override(task_id="margin_after")(dpo.output["checkpoint"])
    check(before, after)


dpo_retrain()
