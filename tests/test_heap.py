"""Freed memory kept for reuse (corolla.heap): a freed block of activations' size comes back
without new pages, and the `corolla` command asks for it before it runs."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import corolla
import corolla.cli

# In a process of its own (mallopt is for the whole process): the page faults of the fifth of five
# evaluations of the reference network (16 images of 64x64, float32), with or without
# keep_freed_memory first.
EVALUATIONS = """
import resource, sys, torch
from corolla.heap import keep_freed_memory
from corolla.unet import UNet

kept = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.set_num_threads(1)
network, x = UNet().eval(), torch.randn(16, 3, 64, 64)
with torch.no_grad():
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        network(x, torch.full((16, 1, 1, 1), 0.5))
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _fifth_evaluations_faults(how: str) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", EVALUATIONS, how], capture_output=True, text=True, timeout=120,
                          check=True, env={**os.environ, "PYTHONPATH": str(Path(corolla.__file__).parents[1])})
    kept, faults = done.stdout.split()
    return kept, int(faults)


@pytest.mark.slow  # starts subprocesses
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_evaluations_reuse_the_memory_the_last_one_freed():
    assert _fifth_evaluations_faults("plain")[1] > 2000  # ~8 MB of fresh pages per evaluation at least
    kept, faults = _fifth_evaluations_faults("keep")
    assert kept == "True"
    assert faults < 100


def test_the_command_keeps_freed_memory_before_it_runs(monkeypatch):
    calls = []
    monkeypatch.setattr(corolla.cli, "keep_freed_memory", lambda: calls.append("keep") or True)
    monkeypatch.setattr(corolla.cli, "main", lambda argv=None: calls.append("main") or 0)
    with pytest.raises(SystemExit) as exit:
        corolla.cli.console()
    assert exit.value.code == 0
    assert calls == ["keep", "main"]
