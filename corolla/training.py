"""The training loop: data -> noise at random times -> L1 noise loss -> AdamW -> EMA -> checkpoints.

Reads top to bottom in phases: set up (data, statistics, model, optimiser), resume, then per
epoch: steps, validation loss of the EMA network, a sample grid from fixed noise, a checkpoint
and a line in metrics.jsonl.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import conditioning, distributed, loggers, losses, warmstart
from . import precision as precisions
from .config import Config
from .data import imagefolder, rundata
from .devices import resolve_device
from .diffusion import DiffusionModel, compile_for_training
from .figures import plot_training
from .generation import NotFinite, SamplingSettings, generate, seeded_generator
from .rates import adam_epsilon, ema_decay, learning_rate, resolve_lr_warmup
from .storage import checkpoint, runfolder, runlog
from .storage.grids import save_grid
from .storage.trainstate import Progress, Sources

LOG_EVERY = 10  # steps between loss syncs (each is a host-device sync on a GPU)


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, say); the last good checkpoint is kept."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: a checkpoint was written at the end of the current step."""


def build(config: Config, device: torch.device) -> tuple[DiffusionModel, torch.optim.Optimizer]:
    torch.manual_seed(config.train.seed)  # the networks' initial weights, the same on every rank
    model = DiffusionModel(config.unet, config.train.schedule, config.train.ema_init, config.sampling.eps_scale,
                           config.sampling.multistep_eps_scale, config.sampling.handover_eps_scale)
    if config.train.sync_bn:
        if device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only); on CPUs each "
                             "process keeps its own BatchNorm statistics")
        model.network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model.network)
    model = model.to(device)
    model.accelerate(channels_last=config.train.channels_last, compile=config.train.compile,
                     precision=precisions.resolve(config.train.precision, device))
    t = config.train
    optimizer = torch.optim.AdamW(model.network.parameters(), lr=t.lr, weight_decay=t.weight_decay,
                                  eps=t.adam_eps, betas=t.adam_betas, foreach=True)
    return model, optimizer


def _as_float(images_uint8: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images_uint8.to(device).float().div_(255.0)


def random_flips(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """images (B, C, H, W) with each mirrored left-right with probability 1/2, drawn from generator."""
    flipped = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flipped.view(-1, 1, 1, 1), images.flip(-1), images)


def train_step(model: DiffusionModel, optimizer: torch.optim.Optimizer, micro_batches: list[torch.Tensor],
               generators: list[torch.Generator], decay: float, ddp: DistributedDataParallel | None = None,
               world: distributed.World = distributed.World(), micro_labels: list[torch.Tensor] | None = None,
               label_dropout: float = 0.0, hflip: bool = False, objective: losses.Objective = losses.Objective()
               ) -> torch.Tensor:
    """The reference's train step over one global batch: noise at uniform random times, the noise
    loss of the online network (DiffusionModel.noise_loss; `objective` the reference's by
    default, its times drawn here), an AdamW step, then the EMA update.

    micro_batches: this process's (B_micro, C, H, W) batches in [0, 1], one generator each; their
    gradients are averaged (accumulation here, DDP's all-reduce across processes) -> the mean loss
    of this process, without a host sync. micro_labels: their class numbers (B_micro,) in a
    conditional run, each dropped to the null label with probability label_dropout. hflip mirrors
    each image with probability 1/2."""
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=micro_batches[0].device)
    for j, (images, generator) in enumerate(zip(micro_batches, generators)):
        # DDP all-reduces gradients on the last micro-batch only
        sync = ddp is None or j == len(micro_batches) - 1
        with contextlib.nullcontext() if sync else ddp.no_sync():
            noises = torch.randn(images.shape, generator=generator, device=images.device)
            times = objective.draw_times(images.shape[0], generator, images.device)
            classes = None
            if micro_labels is not None:  # drawn after the noise and times: those stay an unconditional run's
                classes = conditioning.drop_labels(micro_labels[j], label_dropout,
                                                   len(model.network.config.classes), generator)
            if hflip:  # drawn last, so the draws before it are a run's without flips
                images = random_flips(images, generator)
            # in the model's precision (autocast)
            error = model.noise_loss(images, noises, times, labels=classes, objective=objective)
            (error / len(micro_batches)).backward()
        total += error.detach()
    optimizer.step()
    distributed.average_buffers(model.network, world)  # BatchNorm statistics, so the EMA agrees
    model.update_ema(decay)
    return total / len(micro_batches)


@torch.no_grad()
def validation_loss(model: DiffusionModel, images: torch.Tensor, batch_size: int, seed: int,
                    device: torch.device, labels: torch.Tensor | None = None,
                    times: tuple[float, float] = (0.0, 1.0)) -> float:
    """The reference's test step (EMA network, BatchNorm statistics frozen) over held-out images,
    with noise and times drawn from a fixed seed so epochs compare fairly. With labels (a
    conditional run), the loss of the conditional prediction, no label dropped. `times`: the
    range the run trains on (losses.Objective), its loss being the one that run can lower."""
    if images.shape[0] == 0:
        return float("nan")
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for first in range(0, images.shape[0], batch_size):
        batch = _as_float(images[first:first + batch_size], device)
        noises = torch.randn(batch.shape, generator=generator).to(device)
        drawn = losses.uniform_times(times, batch.shape[0], generator, torch.device("cpu")).to(device)
        classes = None if labels is None else labels[first:first + batch_size].to(device)
        total += model.noise_loss(batch, noises, drawn, ema=True, labels=classes).item() * batch.shape[0]
        count += batch.shape[0]
    return total / count


class _StopSignals:
    """Turns SIGINT/SIGTERM into a flag checked at the end of each step."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.received is not None:  # a second signal: stop at once, the last checkpoint stays
            raise KeyboardInterrupt
        self.received = signum
        print(f"\ncorolla: {signal.Signals(signum).name}: stopping after this step and writing a checkpoint "
              f"(send it again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _check_finite(model: DiffusionModel, running: torch.Tensor, step: int, run_dir: Path) -> None:
    """Never save bad weights: a non-finite loss since the last log, or non-finite weights."""
    tensors = [t for t in model.state_dict().values() if t.is_floating_point()]
    if not torch.isfinite(running) or not all(torch.isfinite(t).all() for t in tensors):
        raise TrainingError(f"loss or weights became NaN or infinite by step {step}; stopped without saving, "
                            f"the last good checkpoint in {run_dir} is kept")


def make_evaluator(config: Config, run: rundata.RunData, device: torch.device):
    """The metrics of corolla.metrics on fixed generated images; KID and FID where Inception
    weights are found (COROLLA_INCEPTION_WEIGHTS or the cache), the rest everywhere."""
    from . import inception, metrics
    network, weights = inception.load_available(None, device)
    if config.train.keep_best in ("kid", "fid") and network is None:
        raise ValueError(f"--keep-best {config.train.keep_best} needs the Inception weights: "
                         f"{inception.weights_help()}")
    real = metrics.cached_real_features(network, run.train, weights) if network is not None else None
    settings = metrics.EvalSettings(samples=config.train.eval_samples, steps=config.train.eval_steps,
                                    seed=config.train.seed, batch_size=config.train.batch_size)
    return metrics.Evaluator(run.train, run.val, settings, network, real)


def micro_batch_size(config: Config, world: distributed.World) -> int:
    """The global batch split over processes and accumulation steps; it must divide evenly."""
    slots = world.size * config.train.accumulate
    if config.train.batch_size % slots:
        raise ValueError(f"batch size {config.train.batch_size} does not divide into {world.size} process(es) x "
                         f"{config.train.accumulate} accumulation step(s); use a multiple of {slots}")
    return config.train.batch_size // slots


# what a resumed run may change: its length and how it runs, not what it learns
RESUMABLE = frozenset({"epochs", "accumulate", "channels_last", "compile", "precision", "sync_bn", "eval_every",
                       "eval_samples", "eval_steps", "keep_best"})


def resumed_config(saved: Config, wanted: Config) -> Config:
    """The config a resumed run continues with: `wanted`, which may differ from the run's `saved`
    one only in RESUMABLE fields. What the run derives from its data (class counts) is not compared,
    and a learning-rate warm-up left unset keeps the saved one."""
    if wanted.train.lr_warmup is None:
        wanted = wanted.replace(train={"lr_warmup": saved.train.lr_warmup})
    new, have = wanted.to_dict(), saved.to_dict()
    changed = [f"{part}.{key}" for part in ("data", "train") for key, value in new[part].items()
               if value != have[part][key] and key not in RESUMABLE | {"class_counts"}]
    if changed:
        raise ValueError(f"a resumed run continues with its saved config; only "
                         f"{', '.join('--' + k.replace('_', '-') for k in sorted(RESUMABLE))} may change, "
                         f"not {', '.join(changed)}")
    return wanted


def train(config: Config, data_dir: str | Path | None = None, out: str | Path = "runs/train",
          device: str = "auto", resume: bool = False, progress: bool = True, max_steps: int | None = None,
          log=print, val_dir: str | Path | None = None, overwrite: bool = False,
          report_to: Sequence[str] = (), conditional: bool = False, labels_file: str | Path | None = None,
          init_from: str | Path | None = None) -> Path:
    """Train (or resume) a run in `out`; returns the folder of its last checkpoint.

    Under torchrun each process trains its share of every global batch with DDP; only rank 0
    writes. max_steps stops early after that many optimiser steps in total. val_dir: held-out
    images for the validation loss instead of a val_fraction of data_dir. One process trains in
    a run folder at a time, and a fresh run refuses a folder holding another run's files unless
    `overwrite`, which deletes them (runfolder.claim). report_to: trackers of corolla.loggers (rank 0 logs).
    conditional: learn the classes of the data (sub-folders, or the CSV labels_file; corolla.data.labels)
    with classifier-free guidance (corolla.conditioning); a config with classes is conditional anyway.
    init_from: a new run starts from that model's weights (corolla.warmstart)."""
    loggers.check(report_to)  # before the run folder is made
    world, dev = distributed.init(resolve_device(device))
    run_dir = checkpoint.ensure_writable(out)  # before decoding: fail early
    loggers.check(report_to, run_dir if world.is_main else None)  # and the trackers' folders (rank 0 reports)
    if data_dir and Path(data_dir).resolve() == run_dir.resolve():
        raise ValueError(f"--out {str(out)!r} is the data folder: the run's grids would become training images; "
                         f"write the run outside the data or into a subfolder of it (run folders are not scanned)")
    if config.train.keep_best:
        checkpoint.check_replaceable(run_dir / "best")  # now, not at the first evaluation
    with runfolder.claim(run_dir, resume, overwrite) if world.is_main else contextlib.nullcontext():
        return _train(config, Sources(data_dir, val_dir, labels_file, init_from), run_dir, world, dev, resume,
                      progress, max_steps, log, report_to, conditional)


def _epoch_grid(model: DiffusionModel, config: Config, run_dir: Path, epoch: int) -> torch.Tensor | None:
    """The EMA network's samples from the run's fixed noise, written as the epoch's grid and
    grid.png -> the images, or None when they are not finite (a diverging run: the loss check
    stops it at its next log line). A conditional run's image i shows class i mod classes."""
    tc, classes = config.train, config.unet.classes
    try:
        grid = generate(model, tc.grid_images, SamplingSettings(steps=tc.sample_steps, seed=tc.seed),
                        image_size=config.data.image_size,
                        classes=[i % len(classes) for i in range(tc.grid_images)] if classes else None)
    except NotFinite:
        return None
    save_grid(grid, run_dir / "samples" / f"epoch_{epoch:03d}.png")
    save_grid(grid, run_dir / "grid.png")
    return grid


def _start_model(config: Config, run: rundata.RunData, run_dir: Path, dev: torch.device,
                 init_from: str | Path | None) -> tuple[DiffusionModel, torch.optim.Optimizer, str | Path | None]:
    """The run's network and optimiser, with the data's statistics and, for a new run started
    from a model, that model's weights -> (model, optimizer, init_from as recorded)."""
    model, optimizer = build(config, dev)
    # room for two checkpoints: the new one is complete before the old one goes
    checkpoint.ensure_writable(run_dir, 2 * checkpoint.training_bytes(model, optimizer) + 2 ** 20)
    model.normalizer.set_statistics(run.mean.to(dev), run.variance.to(dev))
    return model, optimizer, warmstart.load_into(model, config, init_from) if init_from else init_from


def _distribute(model: DiffusionModel, world: distributed.World, dev: torch.device,
                compile: bool) -> DistributedDataParallel:
    """DDP around the trained network, which the model then runs its online forward through."""
    ddp = DistributedDataParallel(model.network, device_ids=[dev.index] if dev.type == "cuda" else None,
                                  forward_sync_buffers=False)
    model.use_online_forward(compile_for_training(ddp) if compile else ddp)
    return ddp


def _set_rates(optimizer: torch.optim.Optimizer, config: Config, step: int, last_step: int) -> None:
    for group in optimizer.param_groups:
        group["eps"] = adam_epsilon(config, step)
        group["lr"] = learning_rate(config, step, last_step)


def _keep_best(scores: dict, best: dict | None, model: DiffusionModel, config: Config, run_dir: Path, step: int,
               epoch: int, say) -> dict | None:
    """--keep-best: the EMA weights of a better evaluation go to run/best -> the best so far."""
    metric = config.train.keep_best
    value = scores.get(metric)
    if value is None or (best is not None and value >= best["value"]):
        return best
    best = {"metric": metric, "value": value, "step": step, "epoch": epoch}
    checkpoint.save_pretrained(run_dir / "best", model, config, ema_only=True, extra_state=best)
    say(f"new best {metric} {value:.4f}: EMA weights in {run_dir / 'best'}")
    return best


@dataclass
class _Run:
    """A run being trained: its config, images and model, where it stands, and the work between
    steps (checkpoint, log line, end of epoch) that the loop calls."""
    config: Config
    run_dir: Path
    world: distributed.World
    dev: torch.device
    data: rundata.RunData
    sources: Sources
    data_identity: dict
    model: DiffusionModel
    optimizer: torch.optim.Optimizer
    progress: Progress
    say: Callable[[str], None]
    running: torch.Tensor  # the loss summed since the last log line, on the device (no sync per step)
    resumed: bool
    reporter: loggers.Reporter | None = None

    def save(self, reason: str) -> Path:
        """A checkpoint of the run as it stands (rank 0 writes; every rank keeps the same partial sum)."""
        p = self.progress
        self.running = distributed.mean(self.running, self.world)
        if not self.world.is_main:
            return self.run_dir
        _check_finite(self.model, self.running, p.step, self.run_dir)
        p.running_loss = self.running.item()
        state = {**dataclasses.asdict(p), "reason": reason, **self.sources.to_state(),
                 "world_size": self.world.size, "data_identity": self.data_identity}
        try:
            return checkpoint.save_training(self.run_dir, self.model, self.config, self.optimizer, state)
        except OSError as error:
            raise TrainingError(f"could not write the checkpoint of step {p.step} ({error.strerror or error}); "
                                f"the previous checkpoint in {self.run_dir} is kept") from None

    def log(self, record: dict) -> None:
        """A line of metrics.jsonl and the trackers (rank 0); every rank counts it."""
        if self.world.is_main:
            runlog.append(self.run_dir / "metrics.jsonl", record)
            self.reporter.record(record, self.optimizer.param_groups[0]["lr"],
                                 ema_decay(self.config, self.progress.step - 1))
        self.progress.log_lines += 1

    def log_loss(self) -> float:
        """Log the mean loss since the last line and start the next sum -> the mean."""
        p = self.progress
        mean_loss = (distributed.mean(self.running, self.world) / p.losses_since_log).item()
        if not math.isfinite(mean_loss):
            raise TrainingError(f"loss became {mean_loss} by step {p.step}; stopped without saving, "
                                f"the last good checkpoint in {self.run_dir} is kept")
        self.log({"step": p.step, "epoch": p.epoch + 1, "train_loss": mean_loss})
        self.running, p.losses_since_log = torch.zeros((), device=self.dev), 0
        return mean_loss

    def end_epoch(self, images_per_s: float, evaluator) -> tuple[Path, str]:
        """Validation loss, the sample grid, the log line, an evaluation when due and a checkpoint
        -> (its folder, the epoch's summary line)."""
        p, tc = self.progress, self.config.train
        p.epoch, p.batch_in_epoch = p.epoch + 1, 0
        val = float("nan")
        if self.world.is_main:
            val = validation_loss(self.model, self.data.val, tc.batch_size, tc.seed, self.dev, self.data.val_labels,
                                  losses.Objective.of(tc).times)
            grid = _epoch_grid(self.model, self.config, self.run_dir, p.epoch)
            if grid is None:
                self.say(f"epoch {p.epoch}: the EMA network's samples are not finite; no sample grid written")
            else:
                self.reporter.grid(grid, p.step)
        # logged before the checkpoint, so the checkpoint's log_lines count it
        self.log({"step": p.step, "epoch": p.epoch, "val_loss": val if math.isfinite(val) else None,
                  "images_per_s": images_per_s})
        if evaluator is not None and p.epoch % tc.eval_every == 0:
            scores = {k: v for k, v in evaluator(self.model).items() if not isinstance(v, list)}
            self.log({"step": p.step, "epoch": p.epoch, **{f"eval_{k}": v for k, v in scores.items()}})
            p.best = _keep_best(scores, p.best, self.model, self.config, self.run_dir, p.step, p.epoch, self.say)
        folder = self.save("epoch")
        if self.world.is_main:
            plot_training(self.run_dir)
        return folder, f"epoch {p.epoch}/{tc.epochs}: step {p.step}, val loss {val:.4f}, {images_per_s:.1f} images/s"

    def interrupted(self, folder: Path, signum: int | None) -> Interrupted:
        data = [str(self.sources.data_dir)] if self.sources.data_dir else []
        command = shlex.join(["corolla", "train", *data, "--out", str(self.run_dir)])
        name = signal.Signals(signum).name if signum else "a signal"
        return Interrupted(f"stopped by {name} at step {self.progress.step}; checkpoint {folder}. "
                           f"Resume with: {command} --resume")


def _set_up(config: Config, sources: Sources, run_dir: Path, world: distributed.World, dev: torch.device,
            resume: bool, conditional: bool, log) -> _Run:
    """The run's config, images and model: a new run's, or a resumed one's as its checkpoint left it."""
    # the checkpoints record the precision used, never "auto"
    config = config.replace(train={"precision": precisions.resolve(config.train.precision, dev)})
    resuming = resume and (run_dir / "latest").exists()
    if resuming:
        config = resumed_config(checkpoint.load_config(checkpoint.resolve(run_dir)), config)
    saved = checkpoint.load_state(run_dir) if resuming else {}
    # the run's own images unless others are given, and never other images than it trained on
    sources = sources.resumed(saved) if resuming else sources
    config, data, identity = rundata.load(config, sources.data_dir, sources.val_dir, conditional,
                                          sources.labels_file, saved)
    model, optimizer, loaded = _start_model(config, data, run_dir, dev, None if resuming else sources.init_from)
    sources = sources if resuming else dataclasses.replace(sources, init_from=loaded)
    config = resolve_lr_warmup(config, bool(sources.init_from))
    say = log if world.is_main else (lambda *_: None)
    progress = Progress()
    if resuming:
        state = checkpoint.load_training(run_dir, model, optimizer)
        progress = Progress.from_state(state)
        if world.is_main:
            runlog.truncate(run_dir / "metrics.jsonl", progress.log_lines)
        say(f"resuming {run_dir} at step {progress.step} (epoch {progress.epoch + 1}, "
            f"batch {progress.batch_in_epoch})")
    low, high = losses.Objective.of(config.train).times
    if (low, high) != (0.0, 1.0):
        say(f"this network learns the diffusion times [{low:g}, {high:g}) only: alone it does not sample; it is "
            f"an expert beside a whole model (benchmarks/noise_levels.py --expert)")
    running = torch.full((), float(progress.running_loss), device=dev)
    return _Run(config, run_dir, world, dev, data, sources, identity, model, optimizer, progress, say, running,
                resuming)


def _train(config: Config, sources: Sources, run_dir: Path, world: distributed.World, dev: torch.device,
           resume: bool, progress: bool, max_steps: int | None, log, report_to: Sequence[str] = (),
           conditional: bool = False) -> Path:
    """`train` in a run folder it holds: set up, then each epoch's steps and the work after them."""
    micro = micro_batch_size(config, world)  # checked before any work
    run = _set_up(config, sources, run_dir, world, dev, resume, conditional, log)
    config, tc, p, model = run.config, run.config.train, run.progress, run.model
    steps_per_epoch = imagefolder.batches_per_epoch(run.data.train.shape[0], config.data.repetitions, tc.batch_size)
    last_step = min(tc.epochs * steps_per_epoch, max_steps or math.inf)  # where a cool-down ends
    slots = range(world.rank * tc.accumulate, (world.rank + 1) * tc.accumulate)  # this rank's micro-batches
    train_images = run.data.train.to(dev)  # uint8 on the device: no host copies in the loop
    train_labels = None if run.data.train_labels is None else run.data.train_labels.to(dev)
    objective = losses.Objective.of(tc)
    evaluator = make_evaluator(config, run.data, dev) if tc.eval_every and world.is_main else None
    ddp = _distribute(model, world, dev, tc.compile) if world.distributed else None
    if max_steps is not None and p.step >= max_steps:
        return checkpoint.resolve(run_dir)  # a resumed run already there
    folder = None
    run.reporter = loggers.start(report_to if world.is_main else (), run_dir, config,
                                 p.step if run.resumed else None)
    with _StopSignals() as stop, run.reporter:
        while p.epoch < tc.epochs:
            order = imagefolder.epoch_order(run.data.train.shape[0], config.data.repetitions, tc.seed, p.epoch).to(dev)
            model.train()
            bar = tqdm(total=steps_per_epoch, initial=p.batch_in_epoch, desc=f"epoch {p.epoch + 1}/{tc.epochs}",
                       disable=not (progress and world.is_main), leave=True, dynamic_ncols=True)
            started, seen, stopping = time.perf_counter(), 0, False
            while p.batch_in_epoch < steps_per_epoch:
                index = order[p.batch_in_epoch * tc.batch_size:(p.batch_in_epoch + 1) * tc.batch_size]
                micro_batches = [_as_float(train_images[index[j * micro:(j + 1) * micro]], dev) for j in slots]
                micro_labels = None if train_labels is None else [train_labels[index[j * micro:(j + 1) * micro]]
                                                                  for j in slots]
                # micro-batch j's own stream: any split over processes and accumulation draws the
                # same noise, and a resumed run needs no saved random state
                generators = [seeded_generator(tc.seed, p.step, j, device=dev) for j in slots]
                _set_rates(run.optimizer, config, p.step, last_step)
                loss = train_step(model, run.optimizer, micro_batches, generators, ema_decay(config, p.step), ddp,
                                  world, micro_labels, tc.label_dropout, tc.hflip, objective)
                p.step, p.batch_in_epoch, p.losses_since_log = p.step + 1, p.batch_in_epoch + 1, p.losses_since_log + 1
                seen += tc.batch_size
                run.running += loss
                if p.losses_since_log == LOG_EVERY or p.batch_in_epoch == steps_per_epoch:
                    mean_loss = run.log_loss()
                    bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{seen / (time.perf_counter() - started):.1f}")
                bar.update(1)
                stopping = distributed.any_rank(stop.received is not None, dev, world)
                if stopping or (max_steps is not None and p.step >= max_steps):
                    break
            bar.close()
            if stopping:
                raise run.interrupted(run.save("interrupted"), stop.received)
            if p.batch_in_epoch < steps_per_epoch:  # max_steps reached mid-epoch
                folder = run.save("max_steps")
                break
            folder, summary = run.end_epoch(seen / max(time.perf_counter() - started, 1e-9), evaluator)
            if distributed.any_rank(stop.received is not None, dev, world):  # a signal during validation
                raise run.interrupted(folder, stop.received)
            run.say(summary)
            if max_steps is not None and p.step >= max_steps:
                break
    distributed.barrier(world)  # rank 0's last checkpoint is on disk before any rank returns
    return folder if folder is not None and world.is_main else checkpoint.resolve(run_dir)
