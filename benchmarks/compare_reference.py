"""corolla against the Keras reference, measured in one run on this machine, one process at a time.

    python benchmarks/compare_reference.py [--variants eager,channels_last,channels_last+bf16,...]
        [--train-steps 10] [--fast dpmpp_2m:10] [--repeats 1]

Runs benchmarks/keras_reference.py (the article's model in Keras 3, float32 and mixed_bfloat16;
needs `pip install .[reference]`) and corolla's seed64 paths through benchmarks/throughput.py's
child processes, then prints one table: training images/s (batch 64, 64x64), seconds for 64
images with 20 DDIM steps, and with a faster solver, each with its ratio to the fastest Keras
configuration; and the machine, its float32 and bfloat16 matrix-product peaks and the date.
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import throughput  # noqa: E402  (a sibling script)

DEFAULT_VARIANTS = "eager,channels_last,channels_last+compile,channels_last+bf16,channels_last+compile+bf16,bf16"
KERAS_POLICIES = ("float32", "mixed_bfloat16")


def keras_child(policy: str, train_steps: int) -> dict | None:
    command = [sys.executable, str(Path(__file__).with_name("keras_reference.py")), "--policy", policy,
               "--train-steps", str(train_steps)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        if "No module named" in done.stderr:
            return None
        raise RuntimeError(f"keras_reference.py --policy {policy} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="corolla variants (see throughput.py)")
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--fast", default="dpmpp_2m:10", help="SAMPLER:STEPS of the faster solver row")
    p.add_argument("--repeats", type=int, default=1, help="repeats of every measurement; the best is shown")
    args = p.parse_args()
    names = [n for n in args.variants.split(",") if n]
    for name in names:
        throughput.variant_options(name)
    fast = throughput.parse_sampling(args.fast)[0]
    started = datetime.datetime.now(datetime.timezone.utc)

    keras: dict[str, list[dict]] = {policy: [] for policy in KERAS_POLICIES}
    ours: dict[str, list[dict]] = {name: [] for name in names}
    spec = dict(preset="seed64", device="cpu", train_steps=args.train_steps, sampling=[("ddim", 20), fast],
                sample_images=64, sample_batch=64)
    for _ in range(args.repeats):  # interleaved, so a busy moment affects every row alike
        for policy in KERAS_POLICIES:
            result = keras_child(policy, args.train_steps)
            if result is not None:
                keras[policy].append(result)
                print(f"  measured Keras {policy}: {result['train_ips']:.1f} images/s, "
                      f"{result['sample_s']:.1f} s", file=sys.stderr, flush=True)
        for name in names:
            result = throughput.run_child("variant", {**spec, "variant": name}, throughput.variant_options(name)[1])
            ours[name].append(result)
            print(f"  measured corolla {name}: {result['train_ips']:.1f} images/s, "
                  f"{result['sample_s']['ddim:20']:.1f} s", file=sys.stderr, flush=True)

    rows = []  # (path, training images/s, DDIM-20 seconds, fast solver seconds, peak GiB)
    for policy, results in keras.items():
        if results:
            rows.append((f"Keras reference, {policy}" + (" (as written)" if policy == "float32" else ""),
                         max(r["train_ips"] for r in results), min(r["sample_s"] for r in results), None,
                         max(r["peak_rss_gib"] for r in results)))
    keras_rows = len(rows)
    fast_key = f"{fast[0]}:{fast[1]}"
    for name, results in ours.items():
        rows.append((f"corolla {name.replace('+', ' + ')}", max(r["train_ips"] for r in results),
                     min(r["sample_s"]["ddim:20"] for r in results), min(r["sample_s"][fast_key] for r in results),
                     max(r["peak_rss_gib"] for r in results)))
    peaks = [r for rs in ours.values() for r in rs]
    fp32_peak = max(r["matmul_gflops"] for r in peaks)
    bf16_peak = max(r["matmul_bf16_gflops"] for r in peaks)
    flops = throughput.flops_per_image(throughput.configs.preset("seed64"))

    print("\n## corolla and the Keras reference, seed64 (64x64, batch 64), one run")
    print(f"machine: {throughput.machine()}; date {started:%Y-%m-%d %H:%M} UTC; {args.repeats} repeat(s), "
          f"{args.train_steps} timed training steps each")
    if keras_rows:
        k = keras["float32"][0] if keras["float32"] else keras["mixed_bfloat16"][0]
        print(f"Keras {k['keras']} on TensorFlow {k['tensorflow']} ({k['parameters']:,} parameters); "
              f"torch {torch.__version__}")
    else:
        print("TensorFlow is not installed (pip install .[reference]): no Keras rows, no ratios")
    print(f"matrix-product peak: float32 {fp32_peak:.0f} GFLOP/s, bfloat16 {bf16_peak:.0f} GFLOP/s -> "
          f"at most {bf16_peak * 1e9 / flops[1]:.0f} training images/s and "
          f"{64 * 20 * flops[0] / 1e9 / bf16_peak:.1f} s for 64 x 20 steps in bfloat16\n")
    best_train = max((r[1] for r in rows[:keras_rows]), default=None)
    best_sample = min((r[2] for r in rows[:keras_rows]), default=None)
    ratio = lambda value, base: "-" if base is None else f"{value / base:.2f}x"
    print(f"| path | training images/s | vs fastest Keras | 64 x 20 DDIM steps (s) | vs fastest Keras | "
          f"64 x {fast[1]} {fast[0]} (s) | peak memory (GiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for path, train_ips, sample_s, fast_s, peak in rows:
        print(f"| {path} | {train_ips:.1f} | {ratio(train_ips, best_train)} | {sample_s:.1f} | "
              f"{'-' if best_sample is None else f'{best_sample / sample_s:.2f}x'} | "
              f"{'-' if fast_s is None else f'{fast_s:.1f}'} | {peak:.2f} |")


if __name__ == "__main__":
    main()
