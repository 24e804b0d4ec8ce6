"""Training and sampling throughput of a preset on this machine, for several speed options.

    python benchmarks/throughput.py [--preset seed64] [--variants eager,channels_last,...]
        [--train-steps 3] [--sampling ddim:20,dpmpp_2m:10] [--sample-images 64] [--repeats 1]
        [--real-run eager,channels_last+compile] [--profile eager,channels_last+compile]

A variant is `+`-joined options of DiffusionModel.accelerate (channels_last, compile; compile also
compiles the EMA network for sampling; bf16: bfloat16 autocast, corolla's --precision bf16; fold:
sampling through the EMA network with BatchNorm folded, as every corolla command samples; heap: freed
memory kept for reuse, corolla.heap, as the `corolla` command's process does) with an
optional `@THREADS` (default: PyTorch's, one per core). Each variant runs in its own process, so
its peak resident memory is its own and compiled code does not leak between variants: it trains on
random images with corolla's own train_step (batch and network of the preset), then samples with
corolla's own generate(), and checks its first loss and first images against the plain eager path.
Variants are interleaved across --repeats so a busy machine affects all alike; the table shows the
best repeat (other work can only slow a run down) and the largest memory and differences.

Also printed: the machine, the network's FLOPs per image (torch.utils.flop_counter), the float32
matrix-product peak per thread count and the throughput those allow, the peak memory of a real
`corolla train` run, and with --profile the operators that take the time.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from corolla import config as configs
from corolla.generation import SamplingSettings, generate
from corolla.heap import keep_freed_memory
from corolla.precision import native_bf16
from corolla.training import build, resolve_device, train_step

DEFAULT_VARIANTS = "eager,channels_last,channels_last+compile,channels_last+compile@1"
OPTIONS = ("channels_last", "compile", "bf16", "fold", "heap")
# what a variant child measures; scaling.py times training and sampling in separate children so
# that each peak memory is that part's own. "check" repeats the first step and images: it needs both.
PARTS = ("train", "sample", "check")


# -- one variant, in a child process -----------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def matmul_peak(device: torch.device, n: int = 2048, repeats: int = 5, dtype=torch.float32) -> float:
    """Best n x n matrix product rate, GFLOP/s: the machine's practical compute ceiling."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(repeats + 1):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def variant_options(name: str) -> tuple[dict[str, bool], int | None]:
    """'channels_last+compile@1' -> ({channels_last: True, compile: True}, 1)."""
    options, _, threads = name.partition("@")
    chosen = [] if options == "eager" else options.split("+")
    unknown = set(chosen) - set(OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))} in variant {name!r}; "
                         f"join eager or {', '.join(OPTIONS)} with + and add @THREADS if wanted")
    return {o: o in chosen for o in OPTIONS}, int(threads) if threads else None


def build_variant(config: configs.Config, device: torch.device, options: dict[str, bool]):
    """corolla's own build, which applies the config's speed options (the sampling ones come with
    ready_to_sample, once the EMA network holds its weights)."""
    config = config.replace(train={"channels_last": options["channels_last"], "compile": options["compile"],
                                   "precision": "bf16" if options["bf16"] else "fp32"})
    return build(config, device)


def ready_to_sample(model, options: dict[str, bool]) -> None:
    """The trained weights as the EMA network (a 0.999 average is still its starting point after
    a few steps), in eval mode, folded and compiled as the variant asks."""
    model.ema_network.load_state_dict(model.network.state_dict())
    model.eval()
    model.accelerate(fold=options["fold"], compile_ema=options["compile"])


def spec_config(spec: dict) -> configs.Config:
    """The preset, at the spec's image size and batch size when it names them."""
    config = configs.preset(spec["preset"])
    return config.replace(data={"image_size": spec.get("image_size", config.data.image_size)},
                          train={"batch_size": spec.get("batch_size", config.train.batch_size)})


def measure_variant(spec: dict) -> dict:
    config = spec_config(spec)
    device = resolve_device(spec["device"])
    options, _ = variant_options(spec["variant"])
    if options["heap"]:
        keep_freed_memory()
    parts = spec.get("parts", PARTS)
    size, batch = config.data.image_size, config.train.batch_size
    result: dict = {"variant": spec["variant"], "threads": torch.get_num_threads()}
    result["matmul_gflops"] = matmul_peak(device)
    # emulated bfloat16 products run at a fraction of float32 (minutes for this product): no peak to speak of
    result["matmul_bf16_gflops"] = matmul_peak(device, dtype=torch.bfloat16) if native_bf16(device) else None

    def first_batch():
        gen = torch.Generator(device=device).manual_seed(0)
        return torch.rand((batch, 3, size, size), generator=gen, device=device), gen

    model, optimizer = build_variant(config, device, options)
    if "train" in parts:  # warm-up steps compile; then the timed steps
        images, gen = first_batch()
        first_loss = train_step(model, optimizer, [images], [gen], config.train.ema).item()
        train_step(model, optimizer, [images], [gen], config.train.ema)
        sync(device)
        start = time.perf_counter()
        for _ in range(spec["train_steps"]):
            loss = train_step(model, optimizer, [images], [gen], config.train.ema)
        loss.item()  # the only host sync of the timed steps
        result["train_ips"] = spec["train_steps"] * batch / (time.perf_counter() - start)
        result["train_rss_gib"] = peak_rss_gib()

    if "sample" in parts:
        ready_to_sample(model, options)  # then one step at the timed batch size compiles
        sample_batch = min(spec["sample_batch"], spec["sample_images"])
        one_step_settings = SamplingSettings(steps=1, batch_size=sample_batch)
        one_step = generate(model, sample_batch, one_step_settings, image_size=size)
        result["sample_s"] = {}
        for sampler, steps in spec["sampling"]:
            sync(device)
            start = time.perf_counter()
            generate(model, spec["sample_images"], SamplingSettings(steps, sampler, batch_size=sample_batch),
                     image_size=size)
            sync(device)
            result["sample_s"][f"{sampler}:{steps}"] = time.perf_counter() - start
    result["peak_rss_gib"] = peak_rss_gib()

    if "check" in parts and any(options.values()):  # the first step and one-step images again, eager
        eager, eager_optimizer = build_variant(config, device, {o: False for o in OPTIONS})
        images, gen = first_batch()
        result["loss_diff"] = abs(train_step(eager, eager_optimizer, [images], [gen], config.train.ema).item()
                                  - first_loss)
        eager.load_state_dict(model.state_dict())
        ready_to_sample(eager, {o: False for o in OPTIONS})
        result["pixel_diff"] = (generate(eager, sample_batch, one_step_settings, image_size=size)
                                - one_step).abs().max().item()
    return result


def onnxruntime_sampling(spec: dict) -> dict:
    """The shipped flowers64 (seed64's network) exported to ONNX and sampled by corolla.portable
    with onnxruntime on the CPU, one thread per core as PyTorch: seconds per spec["sampling"] run
    of spec["sample_images"] images, after a one-step warm-up at the same batch size."""
    from corolla.portable import export, sampling
    from corolla.storage.pretrained import load_pretrained
    model, config = load_pretrained("flowers64")
    result: dict = {"variant": "onnxruntime", "threads": torch.get_num_threads(), "sample_s": {}}
    with tempfile.TemporaryDirectory() as folder:
        export.export_onnx(model, folder, config.data.image_size)
        portable = sampling.load(folder, providers=["CPUExecutionProvider"], threads=torch.get_num_threads())
        batch = min(spec["sample_batch"], spec["sample_images"])
        portable.generate(batch, SamplingSettings(steps=1, batch_size=batch))
        for sampler, steps in spec["sampling"]:
            start = time.perf_counter()
            portable.generate(spec["sample_images"], SamplingSettings(steps, sampler, batch_size=batch))
            result["sample_s"][f"{sampler}:{steps}"] = time.perf_counter() - start
    result["peak_rss_gib"] = peak_rss_gib()
    return result


def real_run(spec: dict) -> dict:
    """A real `corolla train` run of the preset on the bundled images, stopped after a few steps."""
    from corolla.training import train
    options, _ = variant_options(spec["variant"])
    config = configs.preset(spec["preset"]).replace(train={"channels_last": options["channels_last"],
                                                           "compile": options["compile"],
                                                           "precision": "bf16" if options["bf16"] else "fp32"})
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        train(config, out=out, device=spec["device"], progress=False, max_steps=spec["steps"], log=lambda *_: None)
        seconds = time.perf_counter() - start
    return {"peak_rss_gib": peak_rss_gib(), "seconds": seconds}


# -- profile, in a child process --------------------------------------------------------------

def categorise(name: str) -> str:
    # first: generated kernels are named after what they fuse, convolution_backward included
    if name.startswith("graph_") or "CompiledFxGraph" in name:
        return "compiled fused kernels (BN, swish, add, cat, upsample)"
    if "convolution_backward" in name:
        return "convolution backward"
    if "convolution" in name:
        return "convolution forward"
    if any(k in name for k in ("batch_norm", "silu", "add", "cat", "upsample", "avg_pool", "copy_", "mul", "sub",
                               "div", "fill_", "sum", "sign", "abs", "lerp", "addc", "sqrt", "normal_", "uniform_")):
        return "elementwise and data movement"
    return "other"


def profile_variant(spec: dict) -> dict:
    """Top operators (self CPU time) of one training step and one sampling forward pass."""
    import torch._inductor.config as inductor_config
    from torch.profiler import ProfilerActivity, profile
    inductor_config.cpp.enable_kernel_profile = True  # name each generated kernel in the profile
    config = configs.preset(spec["preset"])
    device = resolve_device(spec["device"])
    options, _ = variant_options(spec["variant"])
    size, batch = config.data.image_size, config.train.batch_size
    model, optimizer = build_variant(config, device, options)
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.rand((batch, 3, size, size), generator=gen, device=device)
    noisy = torch.randn((batch, 3, size, size), generator=gen, device=device)
    rates = model.schedule(torch.full((batch, 1, 1, 1), 0.5, device=device))
    out = {"variant": spec["variant"], "threads": torch.get_num_threads()}
    for phase in ("training step", "sampling forward"):
        if phase == "training step":
            def work():
                train_step(model, optimizer, [images], [gen], config.train.ema)
        else:
            ready_to_sample(model, options)

            def work():
                with torch.inference_mode():
                    model.denoise(noisy, *rates)
        work(), work()  # compile and warm up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            work()
        events = [(e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages()]
        total = sum(t for _, t in events)
        groups: dict[str, float] = {}
        for name, t in events:
            groups[categorise(name)] = groups.get(categorise(name), 0.0) + t
        top = sorted(events, key=lambda e: -e[1])[:spec["top"]]
        out[phase] = {"total_s": total, "groups": groups, "top": top}
    return out


# -- the parent: run children, print one table ----------------------------------------------

class ChildFailed(RuntimeError):
    """A child process that exited without a result (scaling.py tells a refusal from running out of memory)."""

    def __init__(self, message: str, returncode: int, stderr: str):
        super().__init__(message)
        self.returncode, self.stderr = returncode, stderr


def run_child(kind: str, spec: dict, threads: int | None) -> dict:
    env = dict(os.environ)
    if threads is not None:  # before the OpenMP runtime starts, for every library that reads it
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    command = [sys.executable, __file__, "--child", kind, json.dumps(spec)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise ChildFailed(f"{kind} child for {spec.get('variant', '')} failed:\n{done.stderr[-3000:]}",
                          done.returncode, done.stderr)
    return json.loads(lines[-1][len("RESULT "):])


def child_main(kind: str, spec: dict) -> None:
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    work = {"variant": measure_variant, "real_run": real_run, "profile": profile_variant,
            "onnxruntime": onnxruntime_sampling}[kind]
    print("RESULT " + json.dumps(work(spec)), flush=True)


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} logical cores, torch {torch.__version__}"


def flops_per_image(config: configs.Config) -> tuple[float, float]:
    """(forward, forward + backward) FLOPs of the U-Net per image, counted by PyTorch."""
    from torch.utils.flop_counter import FlopCounterMode

    from corolla.unet import UNet
    network = UNet(config.unet)
    size = config.data.image_size
    x, v = torch.randn(1, config.unet.channels, size, size), torch.rand(1, 1, 1, 1)
    with FlopCounterMode(display=False) as counter:
        network(x, v)
    forward = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        network(x, v).sum().backward()
    return forward, counter.get_total_flops()


def parse_sampling(text: str) -> list[tuple[str, int]]:
    out = []
    for item in text.split(","):
        sampler, _, steps = item.partition(":")
        if not steps.isdigit():
            raise ValueError(f"--sampling takes SAMPLER:STEPS items, e.g. ddim:20,dpmpp_2m:10; got {item!r}")
        out.append((sampler, int(steps)))
    return out


def print_table(args, config, results: dict[str, list[dict]], flops: tuple[float, float]) -> None:
    fwd, fwd_bwd = flops
    names = list(results)
    best_rate = lambda name, f: max(f(r) for r in results[name])
    best_time = lambda name, f: min(f(r) for r in results[name])
    base = names[0]
    keys = [f"{s}:{n}" for s, n in args.sampling]
    head = ["variant", "threads", "training images/s", "vs eager", "of matmul peak"]
    for key in keys:
        head += [f"sampling {args.sample_images} x {key} (s)", "vs eager"]
    head += ["peak RSS train / all (GiB)", "max diff vs eager: first loss, one-step images"]
    print("| " + " | ".join(head) + " |")
    print("|" + " --- |" * len(head))
    for name in names:
        rs = results[name]
        train = best_rate(name, lambda r: r["train_ips"])
        peak = max(r["matmul_gflops"] for rs2 in results.values() for r in rs2 if r["threads"] == rs[0]["threads"])
        row = [name, str(rs[0]["threads"]), f"{train:.2f}", f"{train / best_rate(base, lambda r: r['train_ips']):.2f}x",
               f"{train * fwd_bwd / 1e9 / peak:.0%}"]
        for key in keys:
            s = best_time(name, lambda r: r["sample_s"][key])
            row += [f"{s:.1f}", f"{best_time(base, lambda r: r['sample_s'][key]) / s:.2f}x"]
        diffs = "-" if "loss_diff" not in rs[0] else \
            f"{max(r['loss_diff'] for r in rs):.1e}, {max(r['pixel_diff'] for r in rs):.1e}"
        row += [f"{max(r['train_rss_gib'] for r in rs):.2f} / {max(r['peak_rss_gib'] for r in rs):.2f}", diffs]
        print("| " + " | ".join(row) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="seed64", choices=sorted(configs.PRESETS))
    p.add_argument("--device", default="auto")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated; see the module docstring")
    p.add_argument("--train-steps", type=int, default=3, help="timed training steps (after 2 warm-up steps)")
    p.add_argument("--sampling", default="ddim:20", help="timed SAMPLER:STEPS runs, comma-separated")
    p.add_argument("--sample-images", type=int, default=64)
    p.add_argument("--sample-batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--real-run", default="eager", help="variants of the real training runs (peak memory); '' skips")
    p.add_argument("--real-run-steps", type=int, default=3, help="steps of each real training run")
    p.add_argument("--profile", default="", help="variants to profile, comma-separated (eager,channels_last+compile)")
    p.add_argument("--top", type=int, default=8, help="operators listed per profile")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child_main(args.child[0], json.loads(args.child[1]))
    device = resolve_device(args.device)
    config = configs.preset(args.preset)
    args.sampling = parse_sampling(args.sampling)
    names = [n for n in args.variants.split(",") if n]
    for name in names + [n for n in (args.profile + "," + args.real_run).split(",") if n]:
        variant_options(name)  # fail early on a typo
    spec = dict(preset=args.preset, device=str(device), train_steps=args.train_steps, sampling=args.sampling,
                sample_images=args.sample_images, sample_batch=args.sample_batch)
    flops = flops_per_image(config)

    started = time.perf_counter()
    results: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(args.repeats):
        for name in names:
            r = run_child("variant", {**spec, "variant": name},
                          variant_options(name)[1])
            results[name].append(r)
            print(f"  measured {name}: {r['train_ips']:.2f} training images/s, "
                  + ", ".join(f"{k} {s:.1f} s" for k, s in r["sample_s"].items()), file=sys.stderr, flush=True)
    real = {n: run_child("real_run", {"preset": args.preset, "device": str(device), "steps": args.real_run_steps,
                                      "variant": n}, variant_options(n)[1])
            for n in args.real_run.split(",") if n}
    profiles = [run_child("profile", {**spec, "variant": n, "top": args.top}, variant_options(n)[1])
                for n in args.profile.split(",") if n]

    c = config
    print(f"\n## Throughput: preset {args.preset} ({c.data.image_size}x{c.data.image_size}, batch "
          f"{c.train.batch_size}), device {device}")
    print(f"machine: {machine()}; PyTorch's default {torch.get_num_threads()} threads; "
          f"{args.repeats} repeat(s), {args.train_steps} timed training steps; "
          f"benchmark wall time {time.perf_counter() - started:.0f} s")
    print(f"U-Net FLOPs per image (torch.utils.flop_counter): forward {flops[0] / 1e9:.2f} G, "
          f"forward + backward {flops[1] / 1e9:.2f} G")
    if results:
        peaks = {}
        for rs in results.values():
            peaks.setdefault(rs[0]["threads"], []).extend(r["matmul_gflops"] for r in rs)
        for threads, values in sorted(peaks.items()):
            peak = max(values)
            steps = args.sampling[0][1]
            seconds = args.sample_images * steps * flops[0] / 1e9 / peak
            print(f"float32 matmul peak, {threads} thread(s): {peak:.0f} GFLOP/s -> limit "
                  f"{peak * 1e9 / flops[1]:.1f} training images/s, {args.sample_images} images x {steps} steps "
                  f"in {seconds:.1f} s")
        print()
        print_table(args, config, results, flops)
    for name, r in real.items():
        print(f"\nreal `corolla train --preset {args.preset}` run on the bundled images, "
              f"{args.real_run_steps} step(s), {name}: peak resident memory {r['peak_rss_gib']:.2f} GiB "
              f"({r['seconds']:.0f} s)")
    print("\nThe Keras reference, measured in the same run: benchmarks/compare_reference.py")
    for prof in profiles:
        for phase in ("training step", "sampling forward"):
            ph = prof[phase]
            print(f"\nprofile: {prof['variant']} ({prof['threads']} threads), one {phase} at batch "
                  f"{c.train.batch_size}: {ph['total_s']:.2f} s of operator time")
            for group, t in sorted(ph["groups"].items(), key=lambda g: -g[1]):
                print(f"  {t / ph['total_s']:6.1%}  {group}")
            print("  top operators:")
            for name, t in ph["top"]:
                print(f"  {t / ph['total_s']:6.1%}  {t:6.3f} s  {name[:90]}")


if __name__ == "__main__":
    main()
