"""Render a repository from the built artifacts with ServingSettings overrides: render.py OUT key=value ..."""
import json
import sys
from pathlib import Path

from build.export import ExportedTower
from build.render import ServingSettings, render_repository

A = Path("artifacts")
info = json.loads((A / "model_repository" / "render.json").read_text())
tower = ExportedTower(A / "towers" / info["query_tower"]["fingerprint"])
out = Path(sys.argv[1])
kw = {k: (int(v) if v.lstrip("-").isdigit() else v) for k, v in (a.split("=") for a in sys.argv[2:])}
r = render_repository(out, tower, A / "index" / info["index"]["index_version"], ServingSettings(**kw))
print(out, {k: r["context"][k] for k in ("pooling_step", "max_queue_delay_us", "encoder_batching")})
