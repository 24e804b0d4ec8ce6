"""DDP on the CPU with gloo and 2 processes (torchrun), against one process that accumulates."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # every test here runs torchrun

WORKER = Path(__file__).with_name("ddp_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.fixture(scope="module")
def flowers(make_flowers):
    return make_flowers(20)


def _run(command, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COROLLA_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([str(c) for c in command], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _max_difference(a, b, prefix, statistics=False):
    """Largest difference over the weights (or the BatchNorm running statistics) under prefix."""
    keys = [k for k in a if k.startswith(prefix) and a[k].is_floating_point() and ("running_" in k) == statistics]
    assert keys
    return max((a[k] - b[k]).abs().max().item() for k in keys)


def _losses(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]


def test_two_ranks_agree_and_match_one_process_accumulating(flowers, tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    _run(TORCHRUN + [WORKER, flowers, two, 4], tmp_path)
    r0, r1 = load_file(two / "rank0.safetensors"), load_file(two / "rank1.safetensors")
    for key in r0:  # every rank identical, the EMA and the BatchNorm statistics included
        assert torch.equal(r0[key], r1[key]), key
    _run([sys.executable, WORKER, flowers, one, 4, 2], tmp_path)  # 1 process, 2 micro-batches a step
    single = load_file(one / "rank0.safetensors")
    assert _max_difference(r0, single, "network.") < 1e-5
    assert _max_difference(r0, single, "ema_network.") < 1e-5
    # BatchNorm statistics: averaged over ranks vs updated once per micro-batch, in a row: close, not equal
    assert 0 < _max_difference(r0, single, "network.", statistics=True) < 0.05
    (s2, l2), = _losses(two)[:1]
    (s1, l1), = _losses(one)[:1]
    assert s1 == s2 == 4 and l1 == pytest.approx(l2, abs=1e-6)


def test_ddp_run_stopped_and_resumed_equals_an_uninterrupted_one(flowers, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _run(TORCHRUN + [WORKER, flowers, straight, 6], tmp_path)
    _run(TORCHRUN + [WORKER, flowers, resumed, 3], tmp_path)
    _run(TORCHRUN + [WORKER, flowers, resumed, 6, "--resume"], tmp_path)
    a, b = load_file(straight / "rank0.safetensors"), load_file(resumed / "rank1.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert json.loads((resumed / "checkpoints" / (resumed / "latest").read_text().strip() / "state.json")
                      .read_text())["step"] == 6


def test_distributed_sampling_writes_the_same_images_as_one_process(flowers, tmp_path):
    run = tmp_path / "run"
    _run([sys.executable, WORKER, flowers, run, 2], tmp_path)
    sample = ["-m", "corolla", "sample", run, "-n", 5, "--steps", 3]
    _run([sys.executable, *sample, "--out", tmp_path / "one.png", "--each", tmp_path / "one"], tmp_path)
    _run(TORCHRUN + [*sample, "--out", tmp_path / "two.png", "--each", tmp_path / "two"], tmp_path)
    for i in range(5):
        with Image.open(tmp_path / "one" / f"{i:05d}.png") as a, Image.open(tmp_path / "two" / f"{i:05d}.png") as b:
            assert a.tobytes() == b.tobytes()


def test_distributed_evaluation_gives_the_same_figures_as_one_process(flowers, tmp_path):
    run = tmp_path / "run"
    _run([sys.executable, WORKER, flowers, run, 2], tmp_path)
    evaluate = ["-m", "corolla", "evaluate", run, "--data", flowers, "--samples", 6, "--steps", 2]
    _run([sys.executable, *evaluate, "--json", tmp_path / "one.json", "--pairs", tmp_path / "one.png"], tmp_path)
    _run(TORCHRUN + [*evaluate, "--json", tmp_path / "two.json", "--pairs", tmp_path / "two.png"], tmp_path)
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one["swd"] > 0
    assert {k for k in one if one[k] != two[k]} == {"seconds", "pairs_png"}
