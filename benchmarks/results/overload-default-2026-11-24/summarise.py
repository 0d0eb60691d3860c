"""Median (min-max) over the rounds of each run set's overload verdict: python summarise.py > summary.md"""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from overload_summary import table  # noqa: E402

SETS = {"no-admission": "retrieve-no-admission-r*.json", "default (nice 10)": "retrieve-default-r*.json",
        "no-admission, second set": "retrieve-no-admission-nice19-r*.json", "default (nice 19)": "retrieve-default-nice19-r*.json",
        "dev: nice 10": "nice-exploration/retrieve-n10-r*.json", "dev: nice 19": "nice-exploration/retrieve-n19-r*.json"}
table(HERE, SETS)
