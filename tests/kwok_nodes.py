"""The fake GPU nodes of the loopback control plane: kwok plays their kubelet (k8s-testenv/)."""

from __future__ import annotations

GPU_NODES = 16
GPUS_PER_NODE = 8


def ensure_gpu_nodes(kubeconfig: str, count: int = GPU_NODES, gpus: int = GPUS_PER_NODE) -> None:
    """Create the nodes ``gpu-node-0..count-1`` that do not exist yet (label ``gpu=h100``); another
    test session may be creating them at the same time (CI runs two beside each other)."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    api = client.CoreV1Api(config.new_client_from_config(kubeconfig))
    existing = {n.metadata.name for n in api.list_node(label_selector="type=kwok").items}
    capacity = {"cpu": "64", "memory": "512Gi", "ephemeral-storage": "1Ti", "pods": "110", "nvidia.com/gpu": str(gpus)}
    for i in range(count):
        if f"gpu-node-{i}" in existing:
            continue
        try:
            api.create_node({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": f"gpu-node-{i}", "labels": {"type": "kwok", "gpu": "h100"}},
                "status": {"allocatable": capacity, "capacity": capacity},
            })
        except ApiException as error:
            if error.status != 409:  # 409: the other session made it first
                raise
