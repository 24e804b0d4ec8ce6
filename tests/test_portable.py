"""ONNX export and sampling without PyTorch (corolla.portable).

The exported network computes PyTorch's predictions at any batch size, the export refuses to
write one that does not, a torn folder is refused on loading, and onnxruntime with corolla's own
samplers on numpy arrays gives PyTorch's float32 images for the same seed to within 1/255, in a
process where torch cannot be imported.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime", reason="corolla.portable needs onnxruntime (pip install onnxruntime)")
pytest.importorskip("onnxscript", reason="torch.onnx's exporter needs onnxscript (pip install onnx onnxscript)")
import onnx  # noqa: E402
import onnxruntime  # noqa: E402
from conftest import CLASSES, make_labels_matter  # noqa: E402

import corolla  # noqa: E402
from corolla import generation  # noqa: E402
from corolla.cli import main  # noqa: E402
from corolla.config import preset  # noqa: E402
from corolla.diffusion import DiffusionModel  # noqa: E402
from corolla.generation import ClassMix  # noqa: E402
from corolla.portable import export, folder, noise, sampling  # noqa: E402
from corolla.samplers import SamplingSettings  # noqa: E402
from corolla.storage import checkpoint  # noqa: E402
from corolla.storage.digest import file_sha256  # noqa: E402
from corolla.unet import UNetConfig  # noqa: E402

SIZE = 16
SMALL = dict(widths=(8, 16), bottom_width=16, block_depth=1, embedding_size=8)
CASES = [("ddim", 0.0, "uniform"), ("ddim", 1.0, "uniform"), ("ddim", 0.5, "karras"), ("dpmpp_2m", 0.0, "logsnr"),
         ("dpmpp_3m", 0.0, "karras"), ("unipc", 0.0, "logsnr"), ("dpmpp_2m", 0.0, "uniform")]


def _tiny(classes: tuple[str, ...] = (), seed: int = 0, **design) -> DiffusionModel:
    """A tiny model whose output matters: random head (and class shifts and scales), BatchNorm
    statistics away from 0 and 1 (so that folding them is tested), images around 0.5."""
    torch.manual_seed(seed)
    model = DiffusionModel(UNetConfig(**SMALL, classes=classes, **design))
    g = torch.Generator().manual_seed(seed + 1)
    make_labels_matter(model.ema_network, g)
    with torch.no_grad():
        for norm in model.ema_network.modules():
            if isinstance(norm, torch.nn.BatchNorm2d):
                norm.running_mean.normal_(0.0, 0.5, generator=g)
                norm.running_var.uniform_(0.5, 2.0, generator=g)
    model.normalizer.set_statistics(torch.tensor([0.45, 0.5, 0.4]), torch.tensor([0.02, 0.03, 0.01]))
    return model.eval()


@pytest.fixture(scope="module")
def model() -> DiffusionModel:
    return _tiny()


@pytest.fixture(scope="module")
def conditional() -> DiffusionModel:
    return _tiny(CLASSES, seed=5)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> Path:
    return export.export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny", SIZE)


@pytest.fixture(scope="module")
def exported_conditional(conditional, tmp_path_factory) -> Path:
    return export.export_onnx(conditional, tmp_path_factory.mktemp("onnx") / "conditional", SIZE)


def _spec(path: Path) -> dict:
    return json.loads((path / folder.SAMPLER_FILE).read_text())


def test_the_folder_says_what_a_sampler_needs(model, exported):
    spec = _spec(exported)
    assert sorted(p.name for p in exported.iterdir()) == [folder.ONNX_FILE, folder.SAMPLER_FILE]
    assert (spec["format"], spec["version"]) == (folder.FORMAT, folder.VERSION)
    assert (spec["schedule"], spec["image_size"], spec["channels"], spec["classes"]) == ("offset_cosine", SIZE, 3, [])
    # the normaliser's float32 statistics survive JSON exactly
    assert np.array_equal(np.float32(spec["normalizer"]["mean"]), model.normalizer.mean.flatten().numpy())
    assert np.array_equal(np.float32(spec["normalizer"]["variance"]), model.normalizer.variance.flatten().numpy())
    assert spec["model_sha256"] == export.model_sha256(model) != export.model_sha256(_tiny(seed=9))
    assert spec["onnx_sha256"] == file_sha256(exported / folder.ONNX_FILE)
    written = onnx.load(str(exported / folder.ONNX_FILE))
    assert spec["opset"] == {o.domain: o.version for o in written.opset_import}[""] >= 18
    # float32 rounding; the noise embedding's sin(2 pi 1000 v) makes it 1e-5 rather than 1e-7
    assert spec["check"]["max_abs_error"] <= 5e-5 and spec["check"]["tolerance"] == export.DEFAULT_TOLERANCE
    assert spec["noise_kernel"] == noise.kernel_for_capability(torch.backends.cpu.get_cpu_capability())
    assert spec["class_mix"] == []  # an unconditional model draws no classes


def test_batchnorm_is_folded_away_and_the_batch_is_free(exported, exported_conditional):
    for path, inputs in ((exported, 2), (exported_conditional, 3)):
        graph = onnx.load(str(path / folder.ONNX_FILE)).graph
        assert not [node for node in graph.node if node.op_type == "BatchNormalization"]
        assert sum(node.op_type == "Conv" for node in graph.node) >= 10
        session = onnxruntime.InferenceSession(str(path / folder.ONNX_FILE), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == list(folder.INPUTS[:inputs])
        assert all(isinstance(i.shape[0], str) for i in session.get_inputs())  # a named, free dimension
    assert session.get_inputs()[2].type == "tensor(int64)"


@pytest.mark.parametrize("batch", [1, 5])
def test_the_onnx_network_predicts_what_pytorch_does(conditional, exported_conditional, batch):
    session = onnxruntime.InferenceSession(str(exported_conditional / folder.ONNX_FILE),
                                           providers=["CPUExecutionProvider"])
    inputs = export.random_inputs(conditional.ema_network, batch, SIZE, seed=7)
    got = session.run(None, {name: x.numpy() for name, x in zip(folder.INPUTS, inputs)})[0]
    with torch.no_grad():
        expected = conditional.ema_network(*inputs).numpy()
    assert np.abs(expected).max() > 0.1  # not a zero network
    assert np.abs(got - expected).max() <= 5e-5 * max(1.0, np.abs(expected).max())


@pytest.mark.parametrize("design, part", [({"class_modulation": "scale-shift"}, "class_scale"),
                                          ({"class_with_noise": True}, "class_join"),
                                          ({"noise_in_blocks": True}, "noise_shift"),
                                          ({"attention": True}, "attention.out")])
def test_the_other_network_designs_are_exported_with_their_parts(tmp_path, design, part):
    film = _tiny(CLASSES, seed=9, **design)
    session = onnxruntime.InferenceSession(str(export.export_onnx(film, tmp_path / "film", SIZE) / folder.ONNX_FILE),
                                           providers=["CPUExecutionProvider"])
    inputs = export.random_inputs(film.ema_network, 3, SIZE, seed=7)
    got = session.run(None, {name: x.numpy() for name, x in zip(folder.INPUTS, inputs)})[0]
    with torch.no_grad():
        expected = film.ema_network(*inputs).numpy()
        for name, weight in film.ema_network.named_parameters():
            if part in name and name.endswith("weight"):
                weight.zero_()
        without = film.ema_network(*inputs).numpy()
    assert np.abs(got - expected).max() <= 5e-5 * max(1.0, np.abs(expected).max())
    assert np.abs(without - expected).max() > 0.01  # the part is in the exported network


def test_the_export_refuses_a_network_that_differs_and_writes_nothing(model, exported, monkeypatch, tmp_path):
    # an exporter that writes a wrong network: the tiny model's, for a model with other weights
    wrong = (exported / folder.ONNX_FILE).read_bytes()
    monkeypatch.setattr(export, "to_onnx", lambda network, size: (wrong, 20))
    other = _tiny(seed=3)
    with pytest.raises(ValueError, match="differ from PyTorch's .* nothing was written"):
        export.export_onnx(other, tmp_path / "new", SIZE)
    assert not (tmp_path / "new").exists()
    # an earlier export in the folder is left as it was
    shutil.copytree(exported, tmp_path / "earlier")
    before = {p.name: p.read_bytes() for p in (tmp_path / "earlier").iterdir()}
    with pytest.raises(ValueError, match="nothing was written"):
        export.export_onnx(other, tmp_path / "earlier", SIZE)
    assert {p.name: p.read_bytes() for p in (tmp_path / "earlier").iterdir()} == before


def test_a_torn_or_altered_folder_is_refused(exported, tmp_path):
    copy = shutil.copytree(exported, tmp_path / "copy")
    with open(copy / folder.ONNX_FILE, "ab") as f:
        f.write(b"\0")
    with pytest.raises(folder.FolderError, match="SHA-256 differs"):
        sampling.load(copy)
    (copy / folder.SAMPLER_FILE).write_text(json.dumps({**_spec(exported), "schedule": "quadratic"}))
    with pytest.raises(folder.FolderError, match="schedule"):
        sampling.load(copy)
    for mix in ([1, 2], [1, -1, 2], [0, 0, 0], [1, True, 2], [1, 2 ** 60, 1]):  # the conditional export's 3 classes
        (copy / folder.SAMPLER_FILE).write_text(json.dumps({**_spec(exported), "classes": list(CLASSES),
                                                            "class_mix": mix}))
        with pytest.raises(folder.FolderError, match="class_mix is missing or invalid"):
            sampling.load(copy)
    with pytest.raises(folder.FolderError, match="not an exported corolla model"):
        sampling.load(tmp_path)


@pytest.mark.parametrize("sampler,eta,grid", CASES)
def test_onnxruntime_gives_pytorchs_images(model, exported, sampler, eta, grid):
    settings = SamplingSettings(steps=5, seed=3, sampler=sampler, eta=eta, grid=grid, batch_size=3)
    expected = generation.generate(model, 4, settings, image_size=SIZE).numpy()
    got = sampling.load(exported, threads=1).generate(4, settings)
    assert got.dtype == np.float32 and got.shape == expected.shape == (4, 3, SIZE, SIZE)
    assert np.abs(got - expected).max() <= 1 / 255
    assert np.abs(expected[0] - expected[1]).mean() > 0.01  # images that differ, not a constant


def test_onnxruntime_scales_the_noise_as_pytorch_does(model, exported, tmp_path):
    settings = SamplingSettings(steps=5, seed=3, sampler="dpmpp_2m", eps_scale=1.05, batch_size=3)
    expected = generation.generate(model, 4, settings, image_size=SIZE).numpy()
    plain = generation.generate(model, 4, replace(settings, eps_scale=1.0), image_size=SIZE).numpy()
    assert np.abs(expected - plain).mean() > 0.005  # the scale changes the images
    assert np.abs(sampling.load(exported, threads=1).generate(4, settings) - expected).max() <= 1 / 255
    # the export carries the model's own scale, the default where settings leave it None
    spec = json.loads((Path(exported) / folder.SAMPLER_FILE).read_text())
    assert spec["eps_scale"] == model.eps_scale == 1.0 and spec["multistep_eps_scale"] is None
    copy = tmp_path / "scaled"
    shutil.copytree(exported, copy)
    (copy / folder.SAMPLER_FILE).write_text(json.dumps({**spec, "eps_scale": 1.05}))
    got = sampling.load(copy, threads=1).generate(4, replace(settings, eps_scale=None))
    assert np.abs(got - expected).max() <= 1 / 255
    # the multistep samplers' own scale, where the export has one (DDIM keeps eps_scale)
    (copy / folder.SAMPLER_FILE).write_text(json.dumps({**spec, "eps_scale": 1.0, "multistep_eps_scale": 1.05}))
    multistep = sampling.load(copy, threads=1)
    assert np.abs(multistep.generate(4, replace(settings, eps_scale=None)) - expected).max() <= 1 / 255
    ddim = replace(settings, sampler="ddim", eps_scale=None)
    assert np.array_equal(multistep.generate(4, ddim), sampling.load(exported, threads=1).generate(4, ddim))
    del spec["eps_scale"]  # an export written before the field: the plain sampler
    (copy / folder.SAMPLER_FILE).write_text(json.dumps(spec))
    got = sampling.load(copy, threads=1).generate(4, replace(settings, eps_scale=None))
    assert np.abs(got - plain).max() <= 1 / 255


@pytest.mark.parametrize("sampler,guidance", [("ddim", 3.0), ("dpmpp_2m", 3.0), ("unipc", 1.0), ("ddim", 0.0)])
def test_onnxruntime_gives_pytorchs_images_of_the_classes_asked(conditional, exported_conditional, sampler, guidance):
    settings = SamplingSettings(steps=4, seed=1, sampler=sampler, batch_size=3)  # its default grid, on both
    options = dict(classes=["daisy", 1, "Sunflower", 0], guidance=guidance)
    expected = generation.generate(conditional, 4, settings, image_size=SIZE, **options).numpy()
    portable = sampling.load(exported_conditional, threads=1)
    got = portable.generate(4, settings, **options)
    assert np.abs(got - expected).max() <= 1 / 255
    if guidance:  # the class changes the image
        unconditional = portable.generate(4, settings, guidance=guidance)
        assert np.abs(got - unconditional).mean() > 0.005


def test_onnxruntime_draws_pytorchs_classes_at_a_mix(conditional, exported_conditional, tmp_path, capsys):
    settings = SamplingSettings(steps=4, seed=2, batch_size=3)
    mix = ClassMix((3, 0, 1))
    expected = generation.generate(conditional, 5, settings, image_size=SIZE, classes=mix, guidance=2.0).numpy()
    portable = sampling.load(exported_conditional, threads=1)
    assert np.abs(portable.generate(5, settings, classes=mix, guidance=2.0) - expected).max() <= 1 / 255
    drawn = portable.drawn_classes(mix, 2, range(5))
    assert drawn == generation.drawn_classes(conditional, mix, 2, range(5)).tolist() and 1 not in drawn
    # the export keeps the training mix: equal chances for a model whose run counted no images
    assert portable.training_mix == ClassMix((1, 1, 1)) and _spec(exported_conditional)["class_mix"] == [1, 1, 1]
    copy = shutil.copytree(exported_conditional, tmp_path / "older")
    (copy / folder.SAMPLER_FILE).write_text(json.dumps({k: v for k, v in _spec(copy).items() if k != "class_mix"}))
    assert main(["sample", str(copy), "--random-class", "-n", "1", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "keeps no training mix" in err and "export the model again" in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


def test_classes_are_checked_before_any_work(exported, exported_conditional):
    with pytest.raises(ValueError, match="not class-conditional"):
        sampling.load(exported).generate(2, classes="daisy")
    portable = sampling.load(exported_conditional)
    with pytest.raises(ValueError, match="closest: 'daisy'"):
        portable.generate(2, classes="daisi")
    with pytest.raises(ValueError, match="0 to 2"):
        portable.generate(2, classes=3)
    with pytest.raises(ValueError, match="3 classes for 2 images"):
        portable.generate(2, classes=[0, 1, 2])


BLOCK_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError("torch is blocked in this test")

sys.meta_path.insert(0, NoTorch())
"""
SAMPLE = """
import numpy as np
from corolla.portable import sampling
from corolla.samplers import SamplingSettings
model = sampling.load({folder!r}, threads=1)
images = [model.generate(3, SamplingSettings(steps=4, seed=3, sampler=s, eta=e, grid=g, batch_size=2))
          for s, e, g in {cases!r}]
np.save({out!r}, np.stack(images))
assert not [name for name in sys.modules if name.split(".")[0] == "torch"]
"""


def _run_without_torch(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(Path(corolla.__file__).parents[1])})


@pytest.mark.slow  # starts a subprocess
def test_sampling_runs_without_torch_and_gives_pytorchs_images(model, exported, tmp_path):
    out = tmp_path / "images.npy"
    done = _run_without_torch(BLOCK_TORCH + SAMPLE.format(folder=str(exported), cases=CASES, out=str(out)))
    assert done.returncode == 0, done.stderr
    for got, (sampler, eta, grid) in zip(np.load(out), CASES):
        settings = SamplingSettings(steps=4, seed=3, sampler=sampler, eta=eta, grid=grid)
        expected = generation.generate(model, 3, settings, image_size=SIZE).numpy()
        assert np.abs(got - expected).max() <= 1 / 255


@pytest.mark.slow  # starts a subprocess
def test_importing_corolla_and_its_portable_sampling_needs_no_torch():
    """The package's names load on first use (PEP 562): only asking for one that needs torch does."""
    done = _run_without_torch(BLOCK_TORCH + """
import corolla
from corolla.portable import sampling
print(corolla.__version__, "sampling" in dir(corolla.portable), "UNet" in dir(corolla))
corolla.UNet
""")
    assert done.stdout.split() == [corolla.__version__, "True", "True"]
    assert done.returncode == 1 and done.stderr.strip().endswith("ModuleNotFoundError: torch is blocked in this test")


def _checkpoint(model: DiffusionModel, path: Path) -> Path:
    """`model` saved as a checkpoint folder, as `corolla export --onnx` reads one; a conditional
    model trained on 3, 0 and 1 images of its classes."""
    counts = (3, 0, 1) if model.ema_network.config.classes else ()
    config = preset("tiny").replace(unet=dict(model.ema_network.config.__dict__),
                                    data={"image_size": SIZE, "class_counts": counts})
    return checkpoint.save_pretrained(path, model, config)


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("classes", [[], ["--class", CLASSES[1], "--class", "0"],
                                     ["--random-class", "--guidance", "2"]], ids=["unconditional", "classes", "mix"])
def test_the_command_exports_a_checkpoint_and_samples_the_folder_as_pytorch_does(model, conditional, classes,
                                                                                   tmp_path):
    saved = _checkpoint(conditional if classes else model, tmp_path / "checkpoint")
    out = tmp_path / "exported"
    assert main(["export", str(saved), "--onnx", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [folder.ONNX_FILE, folder.SAMPLER_FILE]
    common = ["-n", "3", "--steps", "4", "--seed", "2", "--sampler", "dpmpp_2m", "--no-progress", *classes]
    each = ["--each", str(tmp_path / "each")]
    assert main(["sample", str(out), *common, "--out", str(tmp_path / "onnx.png"), *each]) == 0
    assert main(["sample", str(saved), *common, "--precision", "fp32", "--out", str(tmp_path / "torch.png")]) == 0
    onnx_grid, torch_grid = _pixels(tmp_path / "onnx.png"), _pixels(tmp_path / "torch.png")
    assert onnx_grid.shape == torch_grid.shape and np.abs(onnx_grid - torch_grid).max() <= 1  # within 1/255
    assert onnx_grid.std() > 5  # images, not a flat grid
    rows = 2 if "--class" in classes else 1
    assert len(list((tmp_path / "each").glob("*.png"))) == 3 * rows
    if "--random-class" in classes:  # drawn at the training mix the export keeps, named by class
        assert _spec(out)["class_mix"] == [3, 0, 1]
        drawn = generation.drawn_classes(conditional, ClassMix((3, 0, 1)), 2, range(3)).tolist()
        assert sorted(p.name for p in (tmp_path / "each").iterdir()) == [f"class{c}-{i:05d}.png"
                                                                          for i, c in enumerate(drawn)]


def test_the_commands_refuse_what_an_export_cannot_do_in_one_line(exported, tmp_path, capsys):
    cases = [(["sample", str(exported), "--precision", "bf16"], "--precision is for PyTorch checkpoints"),
             (["sample", str(exported), "--device", "cuda"], "--device is for PyTorch checkpoints"),
             (["sample", str(exported), "--class", "0"], "not class-conditional"),
             (["sample", str(exported), "--random-class"], "not class-conditional"),
             (["sample", str(exported), "--guidance", "2"], "--guidance needs --class"),
             (["export", str(exported), "--onnx", "--float32", "--out", str(tmp_path / "x")], "always float32"),
             (["export", str(tmp_path / "missing"), "--onnx", "--out", str(tmp_path / "y")], "does not exist")]
    for argv, message in cases:
        assert main([*argv, "--out", str(tmp_path / "z.png")] if argv[0] == "sample" else argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "z.png").exists() and not (tmp_path / "x").exists()


# -- a cascade (corolla.cascade): two networks, the layout model's in layout/ ----------------------

@pytest.mark.parametrize("size_in,size_out", [(8, 16), (32, 64), (5, 12), (16, 64)])
def test_the_numpy_bicubic_upsampling_is_torch_s(size_in, size_out):
    from corolla import cascade
    from corolla.portable import upsampling
    images = torch.rand(2, 3, size_in, size_in, generator=torch.Generator().manual_seed(size_in))
    images[0, 0] = (torch.arange(size_in * size_in).reshape(size_in, size_in) % 2).float()  # overshoots, clamped
    expected = cascade.upsample(images, size_out).numpy()
    got = upsampling.upsample(images.numpy(), size_out)
    assert got.dtype == np.float32 and got.shape == expected.shape and np.abs(got - expected).max() <= 1e-6
    assert got[0, 0].min() == 0.0 and got[0, 0].max() == 1.0


def _layout(classes: tuple[str, ...] = (), counts: tuple[int, ...] = ()):
    from corolla import cascade
    return cascade.Layout(_tiny(classes, seed=11), SIZE // 2, 0.7, class_counts=counts)


@pytest.fixture(scope="module")
def cascade_pair(model, tmp_path_factory):
    """model with a tiny 8 px layout model handed over at 0.7, its hand-over scale 1.04, exported."""
    finishing = _tiny(seed=0)
    finishing.handover_eps_scale = 1.04
    layout = _layout()
    return finishing, layout, export.export_onnx(finishing, tmp_path_factory.mktemp("onnx") / "cascade", SIZE,
                                                 layout=layout)


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 1.0), ("dpmpp_2m", 0.0)])
def test_an_exported_cascade_gives_pytorch_s_images(cascade_pair, sampler, eta):
    finishing, layout, out = cascade_pair
    assert sorted(p.name for p in out.iterdir()) == [folder.ONNX_FILE, folder.LAYOUT_DIR, folder.SAMPLER_FILE]
    spec = _spec(out)
    assert spec["layout"] == {"start": 0.7, "sampler_sha256": file_sha256(out / folder.LAYOUT_DIR /
                                                                          folder.SAMPLER_FILE)}
    assert spec["handover_eps_scale"] == 1.04 and _spec(out / folder.LAYOUT_DIR)["image_size"] == SIZE // 2
    settings = SamplingSettings(steps=5, seed=3, sampler=sampler, eta=eta, batch_size=3)
    expected = generation.generate(finishing, 4, settings, image_size=SIZE, layout=layout).numpy()
    portable = sampling.load(out, threads=1)
    got = portable.generate(4, settings)
    assert np.abs(got - expected).max() <= 1 / 255
    # the layout matters: without it (the same network, one stage) the images differ
    alone = generation.generate(finishing, 4, settings, image_size=SIZE).numpy()
    assert np.abs(got - alone).mean() > 0.01


def test_an_exported_conditional_layout_gives_an_unconditional_model_s_images_their_class(model, tmp_path):
    layout = _layout(CLASSES, (3, 0, 1))
    out = export.export_onnx(model, tmp_path / "classes", SIZE, layout=layout)
    portable = sampling.load(out, threads=1)
    settings = SamplingSettings(steps=4, seed=2, batch_size=2)
    for options in (dict(classes=["daisy", 2, 0], guidance=2.0), dict(classes=portable.training_mix, guidance=1.0)):
        expected = generation.generate(model, 3, settings, image_size=SIZE, layout=layout, **options).numpy()
        assert np.abs(portable.generate(3, settings, **options) - expected).max() <= 1 / 255
    assert portable.training_mix == ClassMix((3, 0, 1))


def test_a_torn_cascade_is_refused(cascade_pair, tmp_path):
    _, _, out = cascade_pair
    copy = shutil.copytree(out, tmp_path / "copy")
    spec = _spec(copy)
    (copy / folder.SAMPLER_FILE).write_text(json.dumps({**spec, "layout": {**spec["layout"], "start": 1.0}}))
    with pytest.raises(folder.FolderError, match="layout must be"):
        sampling.load(copy)
    (copy / folder.SAMPLER_FILE).write_text(json.dumps(spec))
    layout_spec = _spec(copy / folder.LAYOUT_DIR)
    (copy / folder.LAYOUT_DIR / folder.SAMPLER_FILE).write_text(json.dumps({**layout_spec, "eps_scale": 1.01}))
    with pytest.raises(folder.FolderError, match="not the layout model"):
        sampling.load(copy)
    shutil.rmtree(copy / folder.LAYOUT_DIR)
    with pytest.raises(folder.FolderError, match="missing or not the layout model"):
        sampling.load(copy)


def test_the_command_exports_a_cascade_and_samples_it_as_pytorch_does(model, tmp_path, capsys):
    saved = _checkpoint(model, tmp_path / "checkpoint")
    layout_config = preset("tiny").replace(unet=dict(SMALL), data={"image_size": SIZE // 2})
    small = checkpoint.save_pretrained(tmp_path / "layout", _tiny(seed=11), layout_config)
    out = tmp_path / "exported"
    assert main(["export", str(saved), "--onnx", "--layout", str(small), "--layout-start", "0.6",
                 "--out", str(out)]) == 0
    assert _spec(out)["layout"]["start"] == 0.6
    common = ["-n", "3", "--steps", "4", "--seed", "2", "--no-progress"]
    assert main(["sample", str(out), *common, "--out", str(tmp_path / "onnx.png")]) == 0
    assert main(["sample", str(saved), *common, "--layout", str(small), "--layout-start", "0.6", "--precision",
                 "fp32", "--out", str(tmp_path / "torch.png")]) == 0
    onnx_grid, torch_grid = _pixels(tmp_path / "onnx.png"), _pixels(tmp_path / "torch.png")
    assert np.abs(onnx_grid - torch_grid).max() <= 1 and onnx_grid.std() > 5
    # a checkpoint whose config.json names its layout model exports the cascade unless --no-layout
    config = json.loads((saved / "config.json").read_text())
    config["sampling"].update(layout="first", layout_start=0.6)
    (saved / "config.json").write_text(json.dumps(config))
    shutil.copytree(small, saved / "first")
    assert main(["export", str(saved), "--onnx", "--out", str(tmp_path / "own")]) == 0
    assert main(["export", str(saved), "--onnx", "--no-layout", "--out", str(tmp_path / "alone")]) == 0
    assert (tmp_path / "own" / folder.SAMPLER_FILE).read_bytes() == (out / folder.SAMPLER_FILE).read_bytes()
    assert _spec(tmp_path / "alone")["layout"] is None and not (tmp_path / "alone" / folder.LAYOUT_DIR).exists()
    capsys.readouterr()
    for argv, message in ((["export", str(saved), "--layout", str(small), "--out", str(tmp_path / "r")],
                           "are for --onnx and --web"),
                          (["export", str(saved), "--onnx", "--layout", str(saved), "--out", str(tmp_path / "s")],
                           "it must draw smaller ones"),
                          (["sample", str(out), "--layout", str(small), "--out", str(tmp_path / "t.png")],
                           "--layout is for PyTorch checkpoints")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
    assert not any((tmp_path / name).exists() for name in ("r", "s", "t.png"))
