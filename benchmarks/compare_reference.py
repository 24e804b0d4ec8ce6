"""corolla against the Keras reference, measured in one run on this machine, one process at a time.

    python benchmarks/compare_reference.py [--variants eager,channels_last,channels_last+fold,...]
        [--keras float32,float32:function,...] [--train-steps 10] [--fast dpmpp_2m:10] [--repeats 1]

Runs benchmarks/keras_reference.py (the article's model in Keras 3; needs `pip install
.[reference]`) in each --keras configuration, POLICY[:GRAPH] (float32 or mixed_bfloat16; the
network call of sampling eager as the article, or in tf.function, or tf.function with XLA; only
the eager ones train, as `fit` runs its step in a graph whatever the sampling does), and corolla's
seed64 paths through benchmarks/throughput.py's child processes, one to train and a fresh one to
sample, as a `corolla sample` command starts with nothing allocated (and the shipped flowers64,
the same network, exported to ONNX and sampled by onnxruntime), then prints one table: training
images/s (batch 64, 64x64), seconds for 64 images with 20 DDIM steps, and with a faster solver,
each with its ratio to the fastest Keras configuration and to the machine's limit: the network's
FLOPs at the matrix-product peak of the row's precision (float32, or bfloat16 for
mixed_bfloat16 and bf16), measured in the same run; and the machine and the date.
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

DEFAULT_VARIANTS = ("eager,channels_last,channels_last+fold,channels_last+fold+compile,channels_last+fold+heap,"
                    "channels_last+bf16,channels_last+fold+bf16,channels_last+fold+bf16+heap")
DEFAULT_KERAS = "float32,float32:function,float32:xla,mixed_bfloat16,mixed_bfloat16:function"
GRAPHS = {"eager": "", "function": ", network in tf.function", "xla": ", network in tf.function + XLA"}


def keras_configurations(text: str) -> list[tuple[str, str]]:
    """'float32,mixed_bfloat16:function' -> [('float32', 'eager'), ('mixed_bfloat16', 'function')]."""
    chosen = []
    for item in filter(None, text.split(",")):
        policy, _, graph = item.partition(":")
        if policy not in ("float32", "mixed_bfloat16") or (graph or "eager") not in GRAPHS:
            raise SystemExit(f"--keras {item!r}: POLICY[:GRAPH] with POLICY float32 or mixed_bfloat16 and GRAPH "
                             f"{', '.join(GRAPHS)}")
        chosen.append((policy, graph or "eager"))
    return chosen


def keras_child(policy: str, graph: str, train_steps: int) -> dict | None:
    command = [sys.executable, str(Path(__file__).with_name("keras_reference.py")), "--policy", policy,
               "--graph", graph, "--train-steps", str(train_steps if graph == "eager" else 0)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        if "No module named" in done.stderr:
            return None
        raise RuntimeError(f"keras_reference.py --policy {policy} --graph {graph} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="corolla variants (see throughput.py)")
    p.add_argument("--keras", default=DEFAULT_KERAS, help="Keras configurations, POLICY[:GRAPH] (module docstring)")
    p.add_argument("--no-onnxruntime", action="store_true", help="leave out the onnxruntime row (needs .[onnx])")
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--fast", default="dpmpp_2m:10", help="SAMPLER:STEPS of the faster solver row")
    p.add_argument("--repeats", type=int, default=1, help="repeats of every measurement; the best is shown")
    args = p.parse_args()
    names = [n for n in args.variants.split(",") if n]
    for name in names:
        throughput.variant_options(name)
    fast = throughput.parse_sampling(args.fast)[0]
    configurations = keras_configurations(args.keras)
    started = datetime.datetime.now(datetime.timezone.utc)

    keras: dict[tuple[str, str], list[dict]] = {configuration: [] for configuration in configurations}
    ours: dict[str, list[dict]] = {name: [] for name in names}
    portable: list[dict] = []
    spec = dict(preset="seed64", device="cpu", train_steps=args.train_steps, sampling=[("ddim", 20), fast],
                sample_images=64, sample_batch=64)
    for _ in range(args.repeats):  # interleaved, so a busy moment affects every row alike
        for policy, graph in configurations:
            result = keras_child(policy, graph, args.train_steps)
            if result is not None:
                keras[policy, graph].append(result)
                print(f"  measured Keras {policy} {graph}: {result['sample_s']:.1f} s", file=sys.stderr, flush=True)
        for name in names:
            threads = throughput.variant_options(name)[1]
            trained = throughput.run_child("variant", {**spec, "variant": name, "parts": ["train"]}, threads)
            result = throughput.run_child("variant", {**spec, "variant": name, "parts": ["sample"]}, threads)
            result.update(train_ips=trained["train_ips"],
                          peak_rss_gib=max(trained["peak_rss_gib"], result["peak_rss_gib"]))
            ours[name].append(result)
            print(f"  measured corolla {name}: {result['train_ips']:.1f} images/s, "
                  f"{result['sample_s']['ddim:20']:.1f} s", file=sys.stderr, flush=True)
        if not args.no_onnxruntime:
            try:
                portable.append(throughput.run_child("onnxruntime", spec, None))
                print(f"  measured onnxruntime: {portable[-1]['sample_s']['ddim:20']:.1f} s", file=sys.stderr,
                      flush=True)
            except throughput.ChildFailed as error:
                if "No module named" not in error.stderr:
                    raise
                print("  no onnxruntime row: the onnx extra is not installed (pip install -e '.[onnx]')",
                      file=sys.stderr, flush=True)
                args.no_onnxruntime = True

    # (path, bfloat16?, training images/s or None, DDIM-20 seconds, fast solver seconds or None, peak GiB)
    rows = []
    for (policy, graph), results in keras.items():
        if results:
            trained = [r["train_ips"] for r in results if r["train_ips"] is not None]
            written = " (as written)" if (policy, graph) == ("float32", "eager") else ""
            rows.append((f"Keras reference, {policy}{GRAPHS[graph]}{written}", policy == "mixed_bfloat16",
                         max(trained) if trained else None, min(r["sample_s"] for r in results), None,
                         max(r["peak_rss_gib"] for r in results)))
    keras_rows = len(rows)
    fast_key = f"{fast[0]}:{fast[1]}"
    for name, results in ours.items():
        rows.append((f"corolla {name.replace('+', ' + ')}", throughput.variant_options(name)[0]["bf16"],
                     max(r["train_ips"] for r in results), min(r["sample_s"]["ddim:20"] for r in results),
                     min(r["sample_s"][fast_key] for r in results), max(r["peak_rss_gib"] for r in results)))
    if portable:
        rows.append(("corolla export --onnx, sampled by onnxruntime (float32)", False, None,
                     min(r["sample_s"]["ddim:20"] for r in portable), min(r["sample_s"][fast_key] for r in portable),
                     max(r["peak_rss_gib"] for r in portable)))
    peaks = [r for rs in ours.values() for r in rs]
    fp32_peak = max(r["matmul_gflops"] for r in peaks)
    bf16_peaks = [r["matmul_bf16_gflops"] for r in peaks if r["matmul_bf16_gflops"] is not None]
    bf16_peak = max(bf16_peaks) if bf16_peaks else None  # None: bfloat16 is emulated on this CPU
    flops = throughput.flops_per_image(throughput.configs.preset("seed64"))
    # the machine's limit: 64 images x the steps' network evaluations at the row's precision's peak
    def limit(evaluations: int, bf16: bool) -> float | None:
        peak = bf16_peak if bf16 else fp32_peak
        return None if peak is None else 64 * evaluations * flops[0] / 1e9 / peak

    def times_limit(seconds: float | None, evaluations: int, bf16: bool) -> str:
        bound = limit(evaluations, bf16)
        return "-" if seconds is None or bound is None else f"{seconds / bound:.2f}"

    print("\n## corolla and the Keras reference, seed64 (64x64, batch 64), one run")
    print(f"machine: {throughput.machine()}; date {started:%Y-%m-%d %H:%M} UTC; {args.repeats} repeat(s), "
          f"{args.train_steps} timed training steps each")
    measured = [results[0] for results in keras.values() if results]
    if measured:
        k = measured[0]
        print(f"Keras {k['keras']} on TensorFlow {k['tensorflow']} ({k['parameters']:,} parameters); "
              f"torch {torch.__version__}")
    else:
        print("TensorFlow is not installed (pip install .[reference]): no Keras rows, no ratios")
    bf16_text = "not native here (emulated)" if bf16_peak is None else f"{bf16_peak:.0f} GFLOP/s"
    bf16_limit = "" if bf16_peak is None else f", {limit(20, True):.1f} s in bfloat16"
    print(f"matrix-product peak: float32 {fp32_peak:.0f} GFLOP/s, bfloat16 {bf16_text}; the network "
          f"{flops[0] / 1e9:.2f} GFLOP per image and evaluation -> limit for 64 x 20 steps: {limit(20, False):.1f} s "
          f"in float32{bf16_limit}\n")
    trained = [r[2] for r in rows[:keras_rows] if r[2] is not None]
    best_train = max(trained, default=None)
    best_sample = min((r[3] for r in rows[:keras_rows]), default=None)
    ratio = lambda value, base: "-" if value is None or base is None else f"{value / base:.2f}x"
    print(f"| path | training images/s | vs fastest Keras | 64 x 20 DDIM steps (s) | vs fastest Keras | x limit | "
          f"64 x {fast[1]} {fast[0]} (s) | x limit | peak memory (GiB) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for path, bf16, train_ips, sample_s, fast_s, peak in rows:
        print(f"| {path} | {'-' if train_ips is None else f'{train_ips:.1f}'} | {ratio(train_ips, best_train)} | "
              f"{sample_s:.1f} | {ratio(best_sample, sample_s)} | {times_limit(sample_s, 20, bf16)} | "
              f"{'-' if fast_s is None else f'{fast_s:.1f}'} | {times_limit(fast_s, fast[1], bf16)} | {peak:.2f} |")


if __name__ == "__main__":
    main()
