"""Run by the DDP tests: train the tiny preset, then save the weights this process holds.

    [torchrun --nproc_per_node=2] tests/ddp_worker.py DATA OUT MAX_STEPS [ACCUMULATE] [--resume]
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from corolla import distributed
from corolla.config import preset

if __name__ == "__main__":
    torch.set_num_threads(1)
    args = [a for a in sys.argv[1:] if a != "--resume"]
    data_dir, out, max_steps = args[0], Path(args[1]), int(args[2])
    accumulate = int(args[3]) if len(args) > 3 else 1
    config = preset("tiny").replace(train={"epochs": 3, "accumulate": accumulate}, data={"repetitions": 2})
    from corolla import training
    held = {}
    build = training.build

    def build_and_hold(config, device):  # train() keeps its model inside; hold on to it
        held["model"], optimizer = build(config, device)
        return held["model"], optimizer

    training.build = build_and_hold
    training.train(config, data_dir, out, device="cpu", resume="--resume" in sys.argv, progress=False,
                   max_steps=max_steps)
    state = {k: v.contiguous() for k, v in held["model"].state_dict().items()}
    save_file(state, str(out / f"rank{distributed.from_environment().rank}.safetensors"))
