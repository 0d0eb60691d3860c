"""p50 and p99 of the three rounds per repository, from the JSONs here: pooling.png."""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).parent
fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
for ax, model in zip(axes, ("embed", "retrieve")):
    for i, (variant, label) in enumerate((("separate", "pool_normalize, its own step (before)"), ("encoder", "pooling in the encoder stub (default now)"))):
        runs = [json.loads((HERE / f"{model}-{variant}-r{r}.json").read_text())["all"]["latency_ms"] for r in range(3)]
        for j, q in enumerate(("p50", "p99")):
            values = [run[q] for run in runs]
            x = j * 3 + i
            ax.bar(x, sorted(values)[1], color=f"C{i}", label=label if j == 0 else None)
            ax.scatter([x] * 3, values, color="k", s=10, zorder=3)
    ax.set_xticks([0.5, 3.5], ["p50", "p99"])
    ax.set_title(f"{model}, 20 req/s Poisson, server on 1 core")
    ax.set_ylabel("ms (bar: median of 3 rounds, dots: rounds)")
axes[0].legend()
fig.tight_layout()
fig.savefig(HERE / "pooling.png", dpi=100)
