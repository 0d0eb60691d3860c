"""Median (min-max) over the rounds of each run set's overload verdict: python summarise.py > summary.md
(topk-idle-r3 reads 7911fab-dirty: run.sh, this folder's script, was edited while it ran; no code was)."""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from overload_summary import table  # noqa: E402

table(HERE, {"no admission (capacity probe)": "retrieve-no-admission-r*.json", "default (search stub nice 0)": "retrieve-topk-default-r*.json",
             "--topk-nice 20 (search stub SCHED_IDLE)": "retrieve-topk-idle-r*.json",
             "A/B: no admission (capacity probe)": "retrieve-ab-no-admission-r*.json",
             "A/B: default before the change (aa8eb96 render: ticket back at pooling)": "retrieve-ab-topk-old-r*.json",
             "A/B: default after the change (ticket back at the search)": "retrieve-ab-topk-default-r*.json"})
