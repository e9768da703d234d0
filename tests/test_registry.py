import subprocess
import sys

import pytest

from airflow_provider_training_hub import AlgorithmRegistry, create_algorithm
from airflow_provider_training_hub.algorithms import Backend, SFTAlgorithm
from airflow_provider_training_hub.algorithms.backends.instructlab import InstructLabTrainingBackend

SEED_OPTIONAL = {
    "num_epochs", "effective_batch_size", "learning_rate", "max_seq_len", "max_tokens_per_gpu",
    "data_output_dir", "save_samples", "warmup_steps", "accelerate_full_state_at_epoch",
    "checkpoint_at_epoch", "nproc_per_node", "nnodes", "node_rank", "rdzv_id", "rdzv_endpoint",
}


def test_discovery_lists_sft_and_its_default_backend():
    assert "sft" in AlgorithmRegistry.list_algorithms()
    assert "instructlab-training" in AlgorithmRegistry.list_backends("sft")
    assert AlgorithmRegistry.get_algorithm("sft") is SFTAlgorithm
    assert AlgorithmRegistry.default_backend("sft") == "instructlab-training"
    assert AlgorithmRegistry.get_backend("sft", "instructlab-training") is InstructLabTrainingBackend


def test_create_algorithm_defaults_to_instructlab():
    algo = create_algorithm("sft")
    assert isinstance(algo, SFTAlgorithm)
    assert isinstance(algo.backend, InstructLabTrainingBackend)


class _Capture(Backend):
    """Returns the parameters it was given instead of training: what reaches a backend."""

    def execute(self, params):
        return params


def test_create_algorithm_checks_its_keyword_arguments_and_train_starts_from_them(tmp_path):
    """training_hub keeps create_algorithm's keyword arguments as the algorithm's config; here they
    are checked like any parameter, and each train() call starts from them."""
    with pytest.raises(ValueError, match=r"Unknown parameter 'num_epoch'\. Did you mean 'num_epochs'\?"):
        create_algorithm("sft", "pytorch", num_epoch=3)
    with pytest.raises(ValueError, match=r"Invalid parameter 'num_epochs': must be at least 1 \(got 0\)"):
        create_algorithm("sft", "pytorch", num_epochs=0)
    (tmp_path / "model").mkdir()
    (tmp_path / "d.jsonl").write_text("")
    algo = SFTAlgorithm(backend=_Capture(), num_epochs=3, learning_rate=1e-4)
    assert algo.config == {"num_epochs": 3, "learning_rate": 1e-4}
    params = algo.train(model_path=str(tmp_path / "model"), data_path=str(tmp_path / "d.jsonl"),
                        ckpt_output_dir=str(tmp_path / "c"), learning_rate=5e-5)
    assert (params.num_epochs, params.learning_rate) == (3, 5e-5)  # from the config; train()'s own wins


class _GuideBackend(Backend):
    """A backend as training_hub's "Extending the Framework" guide writes one (its Step 2):
    ``execute_training`` over a dict, reading optional parameters with ``.get``, returning a dict."""

    def execute_training(self, algorithm_params):
        output_dir = algorithm_params["ckpt_output_dir"]
        num_epochs = algorithm_params.get("num_epochs", 3)
        learning_rate = algorithm_params.get("learning_rate", 1e-5)
        return {"status": "success", "checkpoint_path": f"{output_dir}/final_checkpoint",
                "given": algorithm_params, "plan": (num_epochs, learning_rate)}


def test_a_backend_written_from_training_hubs_guide_runs_through_sft(tmp_path, monkeypatch):
    from airflow_provider_training_hub import sft

    monkeypatch.setitem(AlgorithmRegistry._backends, "sft", dict(AlgorithmRegistry._backends["sft"]))  # put back after
    AlgorithmRegistry.register_backend("sft", "my_backend", _GuideBackend)  # the guide's Step 3
    (tmp_path / "model").mkdir()
    (tmp_path / "d.jsonl").write_text("")
    paths = {"model_path": str(tmp_path / "model"), "data_path": str(tmp_path / "d.jsonl"),
             "ckpt_output_dir": str(tmp_path / "out")}
    # None is "not given", as training_hub's own functions pass every parameter left out
    result = sft(**paths, backend="my_backend", num_epochs=5, learning_rate=None)
    assert result["checkpoint_path"] == f"{tmp_path}/out/final_checkpoint"
    assert result["given"] == {**paths, "num_epochs": 5}  # what the caller gave, as training_hub passes it
    assert result["plan"] == (5, 1e-5)  # so the backend's own defaults apply, as they do upstream
    assert create_algorithm("sft", backend_name="my_backend").train(**paths)["plan"] == (3, 1e-5)  # Step 4

    class Neither(Backend):
        pass

    with pytest.raises(TypeError, match=r"'nothing' \(Neither\) must override execute\(params\) or, as training_hub "
                                        r"documents it, execute_training\(algorithm_params\)"):
        AlgorithmRegistry.register_backend("sft", "nothing", Neither)


def test_param_introspection_matches_the_seed_reference():
    algo = create_algorithm("sft", "instructlab-training")
    assert algo.get_required_params() == {"model_path": str, "data_path": str, "ckpt_output_dir": str}
    optional = algo.get_optional_params()
    assert SEED_OPTIONAL <= set(optional)
    assert optional["num_epochs"] is int and optional["learning_rate"] is float
    assert optional["checkpoint_at_epoch"] is bool


def test_unknown_algorithm_lists_what_exists():
    with pytest.raises(ValueError, match=r"Unknown algorithm 'sfft'\. Did you mean 'sft'\? Available: .*sft"):
        create_algorithm("sfft")


def test_unknown_backend_lists_what_exists():
    with pytest.raises(ValueError, match=r"Unknown backend for 'sft': 'instructlab'.*Available: .*instructlab-training"):
        create_algorithm("sft", "instructlab")


def test_training_side_imports_need_neither_airflow_nor_torch():
    """A training pod has no Airflow; an Airflow scheduler has no torch (docs/design.md)."""
    code = (
        "import sys\n"
        "import airflow_provider_training_hub, airflow_provider_training_hub.algorithms,"
        " airflow_provider_training_hub.checkpoints, airflow_provider_training_hub.cli,"
        " airflow_provider_training_hub.models\n"
        "from airflow_provider_training_hub.cli import build_parser; build_parser()\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'airflow', 'torch', 'transformers', 'instructlab', 'datasets'})\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
