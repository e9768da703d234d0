import json
import tempfile
from pathlib import Path

from airflow.sdk import dag, task

from airflow_provider_training_hub.hooks.training_hub import TrainingHubHook
from airflow_provider_training_hub.operators import SFTTrainOperator, ValidateMessagesDataOperator

WORK = Path(tempfile.gettempdir()) / "first_fine_tune"


@dag(schedule=None)
def first_fine_tune():
    """Fine-tune a tiny model on a dozen conversations, locally, and print the checkpoint."""

    @task
    def write_data() -> str:
        WORK.mkdir(exist_ok=True)
        chats = [[{"role": "user", "content": f"What is {n} plus {n}? Answer in words, please."},
                  {"role": "assistant", "content": f"{n} plus {n} makes {2 * n}, as you asked."}]
                 for n in range(12)]
        path = WORK / "train.jsonl"
        path.write_text("".join(json.dumps({"messages": chat}) + "\n" for chat in chats))
        return str(path)

    @task
    def make_model(data_path: str) -> str:
        # A tiny random Llama, made offline; its tokenizer is trained on the data's text.
        return TrainingHubHook().make_model("tiny", str(WORK / "model"), corpus=data_path)

    data_path = write_data()
    validate = ValidateMessagesDataOperator(task_id="validate", data_path=data_path)
    train = SFTTrainOperator(
        task_id="train", backend="pytorch", model_path=make_model(data_path),
        data_path=validate.output["data_path"],
        num_epochs=3, effective_batch_size=4, max_seq_len=256, learning_rate=1e-3,
    )

    @task
    def show(checkpoint: str) -> None:
        print("checkpoint:", checkpoint)

    show(train.output["checkpoint"])


first_fine_tune()
