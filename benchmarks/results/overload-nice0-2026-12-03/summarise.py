"""Median (min-max) over the rounds of each run set's overload verdict: python summarise.py > summary.md"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from overload_summary import table  # noqa: E402

table(HERE, {"no admission (capacity probe)": "retrieve-no-admission-r*.json",
             "the default from 2026-12-03 (both stubs at nice 0)": "retrieve-default-r*.json",
             "the default before (encoder stub nice 19, search stub SCHED_IDLE)": "retrieve-old-r*.json"})
