"""The states of a training run, as every execution target reports them (``status`` of a target's
state) and the operator reads them: whether to wait for a run an earlier try left, take its
result, or start anew. Below both ``kubernetes/`` and ``targets/``, so that each names them once."""

RUNNING, SUCCEEDED, FAILED, UNSCHEDULABLE = "running", "succeeded", "failed", "unschedulable"
