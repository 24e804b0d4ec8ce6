"""Freed memory kept for reuse (corolla.heap): a freed block of activations' size comes back
without new pages, the `corolla` command asks for it before it runs, and the checks of free memory
count it."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import corolla
import corolla.cli
from corolla import heap, limits

# In a process of its own (mallopt is for the whole process): the page faults of the fifth of five
# evaluations of the reference network (16 images of 64x64, float32), with or without
# keep_freed_memory first.
EVALUATIONS = """
import resource, sys, torch
from corolla.heap import free_bytes_held, keep_freed_memory
from corolla.unet import UNet

kept = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.set_num_threads(1)
network, x = UNet().eval(), torch.randn(16, 3, 64, 64)
with torch.no_grad():
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        network(x, torch.full((16, 1, 1, 1), 0.5))
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, free_bytes_held())
"""


def _fifth_evaluation(how: str) -> tuple[str, int, int]:
    """(whether keep_freed_memory took, the fifth evaluation's page faults, the free bytes held after)."""
    done = subprocess.run([sys.executable, "-c", EVALUATIONS, how], capture_output=True, text=True, timeout=120,
                          check=True, env={**os.environ, "PYTHONPATH": str(Path(corolla.__file__).parents[1])})
    kept, faults, held = done.stdout.split()
    return kept, int(faults), int(held)


@pytest.mark.slow  # starts subprocesses
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_evaluations_reuse_the_memory_the_last_one_freed():
    assert _fifth_evaluation("plain")[1] > 2000  # ~8 MB of fresh pages per evaluation at least
    kept, faults, held = _fifth_evaluation("keep")
    assert kept == "True"
    assert faults < 100
    assert held > 2 ** 25  # the evaluation's activations, freed and held: tens of MB


def test_free_memory_counts_what_the_process_holds_freed(monkeypatch):
    """The checks that refuse a batch before allocating it count the freed memory the process
    keeps as free: it is where the next evaluation's activations come from."""
    monkeypatch.setattr(heap, "free_bytes_held", lambda: 10 ** 15)
    free = limits.available_bytes(torch.device("cpu"))
    if free is None:
        pytest.skip("no /proc/meminfo here")
    assert 10 ** 15 < free < 10 ** 15 + os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_the_command_keeps_freed_memory_before_it_runs(monkeypatch):
    calls = []
    monkeypatch.setattr(corolla.cli, "keep_freed_memory", lambda: calls.append("keep") or True)
    monkeypatch.setattr(corolla.cli, "main", lambda argv=None: calls.append("main") or 0)
    with pytest.raises(SystemExit) as exit:
        corolla.cli.console()
    assert exit.value.code == 0
    assert calls == ["keep", "main"]
