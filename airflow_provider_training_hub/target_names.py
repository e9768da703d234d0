"""The execution targets by name: the connection's ``execution`` choices (``connection.py``) and
the class each one loads (``targets/``), kept below both. A third target is one line here and
one module under ``targets/``.
"""

TARGETS = {
    "local": "airflow_provider_training_hub.targets.local.LocalTarget",
    "kubernetes": "airflow_provider_training_hub.targets.kubernetes.KubernetesTarget",
}
