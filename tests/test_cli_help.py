"""Every command line prints its help: argparse formats help strings with %, so one stray "3%"
in a setting's description made `python -m build render --help` crash with a traceback."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Each module's main(argv) runs with "--help" for its top level, every sub-command its top-level help
# lists ({a,b,...}), and the sub-commands it dispatches on argv[0] before argparse sees them.
RUNNER = r"""
import contextlib, importlib, io, json, re, sys
module, extra = sys.argv[1], json.loads(sys.argv[2])
main = importlib.import_module(module + ".__main__").main

def help_of(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = main([*argv, "--help"])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue()

code, text = help_of([])
found = {"": (code, len(text))}
commands = re.search(r"\{([a-z0-9,-]+)\}", text)
for command in (commands.group(1).split(",") if commands else []) + extra:
    code, sub = help_of([command])
    found[command] = (code, len(sub), sub[-300:] if code else "")
print(json.dumps(found))
"""

DISPATCHED = {"build": ["int8-report", "synthetic", "deploy-index", "rollback", "k8s", "shards"]}


@pytest.mark.parametrize("module", ["build", "model_repository", "benchmarks", "training", "clients"])
def test_every_command_prints_its_help(module):
    done = subprocess.run([sys.executable, "-c", RUNNER, module, json.dumps(DISPATCHED.get(module, []))], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(found) > 1 or module == "training", found  # the sub-commands were found, not only the top level
    for command, (code, length, *tail) in found.items():
        assert code == 0 and length > 100, (module, command, code, tail)
