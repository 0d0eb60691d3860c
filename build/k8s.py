"""Kubernetes manifests for several Triton replicas behind one Service (deploy/k8s/*.j2).

Readiness is Triton's ``/v2/health/ready`` (strict: every model ready), liveness
``/v2/health/live``; each replica requests its GPUs as ``nvidia.com/gpu``. Rendered,
parsed back as YAML and checked by the tests; not applied to a cluster here.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jinja2

from model_repository.launcher import DEFAULT_CUDA_POOL_BYTES, policy_flags, restriction_flags
from model_repository.supervisor import IMAGE_COMMAND

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "k8s" / "scalingnote.yaml.j2"


@dataclasses.dataclass(frozen=True)
class ClusterSettings:
    name: str = "scalingnote"
    replicas: int = 3
    image: str = "scalingnote-triton:24.10"
    gpus: int = 1  # per replica; a sharded index takes one GPU per shard
    cpu: str = "4"
    memory: str = "16Gi"
    shm: str = "2Gi"
    repository_claim: str = "scalingnote-models"  # a PVC holding the rendered model repository
    repository_mount: str = "/models"
    startup_failures: int = 60  # x 10 s: loading the index and engine may take minutes
    cuda_pool_bytes: int = DEFAULT_CUDA_POOL_BYTES  # per GPU; launcher.cuda_pool_bytes() sizes it for a repository
    admin_secret: str = "scalingnote-admin"  # a Secret whose key 'admin-key' guards model control (pods bind beyond loopback)


def render_manifests(settings: ClusterSettings) -> str:
    if settings.replicas < 1 or settings.gpus < 0:
        raise ValueError(f"replicas must be >= 1 and gpus >= 0; got {settings.replicas}, {settings.gpus}")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE.parent), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    pools = {gpu: settings.cuda_pool_bytes for gpu in range(settings.gpus)}
    # $(SN_ADMIN_KEY) is expanded by Kubernetes from the container's environment (the Secret).
    # Under the stub supervisor (model_repository/supervisor.py): a dead python-backend stub is brought back, or
    # the container exits and the kubelet restarts it; the pod never keeps answering errors while probes pass.
    server_args = [*IMAGE_COMMAND, "tritonserver", f"--model-repository={settings.repository_mount}", *policy_flags(cuda_pools=pools),
                   *restriction_flags("$(SN_ADMIN_KEY)")]
    return env.get_template(TEMPLATE.name).render({**dataclasses.asdict(settings), "server_args": server_args})
