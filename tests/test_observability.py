"""The shipped Prometheus scrape config and Grafana dashboard (deploy/) query what a live server exports."""
from __future__ import annotations

import json
import re
import urllib.request

import pytest
import yaml

from clients.retrieval import RetrievalClient
from model_repository.launcher import ServerConfig, free_port
from tests.conftest import HAS_CUDA, ROOT, start_server

DASHBOARD = ROOT / "deploy" / "grafana" / "scalingnote-dashboard.json"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GPU_ONLY = {"nv_gpu_utilization", "nv_gpu_memory_used_bytes"}  # Triton exports these only where it sees a GPU


def _queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def _scrape(url: str) -> dict[str, list[str]]:
    """metric name -> its sample lines."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            samples.setdefault(re.split(r"[{ ]", line, maxsplit=1)[0], []).append(line)
    return samples


@pytest.fixture(scope="module")
def scraped(repository, tmp_path_factory) -> dict[str, list[str]]:
    server = start_server(repository, tmp_path_factory.mktemp("observability"), supervisor_metrics_port=free_port())
    try:
        with RetrievalClient(server.grpc_url) as c:
            for k in (1, 3, 10):
                c.retrieve(["how do I copy a file"], k=k)
                c.embed(["how do I copy a file"])
        return {**_scrape(server.metrics_url), **_scrape(f"http://127.0.0.1:{server.config.supervisor_metrics_port}/metrics")}
    finally:
        server.stop()


def test_every_metric_the_dashboard_queries_is_exported(scraped):
    queried = {name for expr in _queries() for name in re.findall(r"\b((?:nv|sn)_[a-z0-9_]+)\b", expr)}
    assert len(queried) >= 12
    missing = sorted(queried - set(scraped) - (GPU_ONLY if not HAS_CUDA else set()))
    assert not missing, f"the dashboard queries metrics no server exports: {missing}"
    if not HAS_CUDA:
        assert not GPU_ONLY & set(scraped), "a CPU server exported GPU metrics: the GPU-only list is wrong"
    # The quantiles the latency panels read, for both ensembles and every step.
    for quantile in ("0.5", "0.99"):
        models = {m for line in scraped["nv_inference_request_summary_us"] if f'quantile="{quantile}"' in line
                  for m in re.findall(r'model="([^"]+)"', line)}
        assert {"retrieve", "embed", "ensemble_tokenizer", "query_encoder", "mips_topk"} <= models, models
    assert {re.search(r'model="([^"]+)"', line).group(1) for line in scraped["sn_stub_instances"]} == {
        "tokenizer", "ensemble_tokenizer", "query_encoder", "mips_topk"}  # the CPU encoder pools: no pool_normalize step


def test_the_scrape_config_targets_the_ports_the_server_listens_on():
    config = yaml.safe_load(PROMETHEUS.read_text(encoding="utf-8"))
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"] if "static_configs" in job}
    defaults = ServerConfig(model_repository=ROOT, workdir=ROOT)
    assert targets["scalingnote-triton"] == [f"127.0.0.1:{defaults.metrics_port}"]
    from model_repository.__main__ import main  # noqa: F401 - the serve CLI's default supervisor port is 8003
    assert targets["scalingnote-supervisor"] == ["127.0.0.1:8003"]
    # Every query selects the label the scrape config adds, so it reads only this service.
    assert all('service="scalingnote"' in expr for expr in _queries())
    assert all(job.get("static_configs", [{}])[0].get("labels", {}).get("service") == "scalingnote"
               for job in config["scrape_configs"] if "static_configs" in job)
