"""Where a result came from: the commit, the machine, and a headless plotting back end.

Offline tools (training run cards, benchmark results) record these next to what they
write. Imported lazily by serving code, if at all: nothing here runs on a request.
"""
from __future__ import annotations

import os
import platform
import socket
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def git_commit(repo: Path = REPO) -> str:
    """HEAD's sha, with ``-dirty`` when tracked files differ from it; ``unknown`` outside a checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine() -> dict:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def pyplot():
    """matplotlib.pyplot on the Agg back end: plots are written as PNG files, never shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 110):
    """A matplotlib figure as a 256-colour PNG (written beside, then renamed into place).

    Plots have few colours, so the palette keeps them visually the same (antialiased edges move by a
    few levels) at about a third of the bytes of matplotlib's RGBA PNG. Results are committed, and a
    GPU run re-sends the whole tree under a 64 MiB cap, so the bytes count.
    """
    import io

    from PIL import Image  # matplotlib's own dependency

    from .files import atomic_write_bytes

    raw, png = io.BytesIO(), io.BytesIO()
    fig.savefig(raw, format="png", dpi=dpi)
    raw.seek(0)
    image = Image.open(raw).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    image.save(png, format="PNG", optimize=True)
    atomic_write_bytes(Path(path), png.getvalue())
    return Path(path)
