"""Peak memory of one network evaluation, per image pixel: what limits.EVALUATION_BYTES_PER_PIXEL
(the estimate that refuses a sampling batch that cannot fit) is set from.

    python benchmarks/sampling_memory.py [--model flowers64] [--cases 16x64,32x64,8x128]

Each case (BATCHxSIZE) runs in its own process, one thread, and reports the growth of the peak
resident memory (VmHWM, Linux) across one EMA evaluation on the path the commands sample on (channels-last, in
float32, or the machine's default precision with --precision auto).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASE = """
import json, sys, torch
from corolla.storage import checkpoint, pretrained
def peak():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) * 1024
torch.set_num_threads(1)
model, _ = checkpoint.load_for_sampling(pretrained.path(sys.argv[1]), torch.device("cpu"), sys.argv[4])
batch, size = int(sys.argv[2]), int(sys.argv[3])
x = torch.randn(batch, 3, size, size)
noise_rates = torch.full((batch, 1, 1, 1), 0.5)
before = peak()
with torch.inference_mode():
    model.denoise(x, noise_rates, (1 - noise_rates ** 2).sqrt())
print(json.dumps({"batch": batch, "size": size, "bytes": peak() - before}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="flowers64")
    p.add_argument("--cases", default="16x64,32x64,8x128")
    p.add_argument("--precision", default="fp32", choices=["fp32", "auto"])
    args = p.parse_args()
    from corolla import limits
    print(f"limits.EVALUATION_BYTES_PER_PIXEL = {limits.EVALUATION_BYTES_PER_PIXEL:,}")
    for case in args.cases.split(","):
        batch, size = case.split("x")
        out = subprocess.run([sys.executable, "-c", CASE, args.model, batch, size, args.precision],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out)
        per_pixel = r["bytes"] / (r["batch"] * r["size"] ** 2)
        print(f"batch {r['batch']:>3} at {r['size']:>3} px: {r['bytes'] / 2 ** 20:7.1f} MiB, "
              f"{per_pixel:,.0f} bytes per image pixel")


if __name__ == "__main__":
    main()
