"""DiffusionModel.accelerate: speed options must not change results beyond float rounding, nor the
names of the weights (checkpoints written with or without them load either way)."""
import pytest
import torch

from corolla.config import preset
from corolla.diffusion import DiffusionModel
from corolla.storage import checkpoint

CONFIG = preset("tiny")
TOL = 5e-5  # float32 rounding: channels-last convolutions and BatchNorm sum in other orders
LR = 1e-2


@torch.no_grad()
def _pair(**options) -> tuple[DiffusionModel, DiffusionModel]:
    """Two identical tiny models, the second accelerated, with random BatchNorm statistics and
    output convolutions (zero at initialisation, they would zero every other gradient)."""
    torch.manual_seed(0)
    plain = DiffusionModel(CONFIG.unet)
    g = torch.Generator().manual_seed(1)
    for network in (plain.network, plain.ema_network):
        network.head.weight.copy_(0.1 * torch.randn(network.head.weight.shape, generator=g))
    for name, buffer in plain.named_buffers():
        if name.endswith("running_mean") or name.endswith("running_var"):
            buffer.copy_(torch.rand(buffer.shape, generator=g) + 0.5)
    fast = DiffusionModel(CONFIG.unet)
    fast.load_state_dict(plain.state_dict())
    return plain, fast.accelerate(**options)


def _batch(seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand((4, 3, 16, 16), generator=g)
    noises = torch.randn(images.shape, generator=g)
    times = torch.rand((4, 1, 1, 1), generator=g)
    return images, noises, times


def _train_step(model: DiffusionModel, optimizer: torch.optim.Optimizer, seed: int) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss = model.noise_loss(*_batch(seed))
    loss.backward()
    optimizer.step()
    model.update_ema(0.9)
    return loss.detach()


def _optimizer(model: DiffusionModel) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.network.parameters(), lr=LR, foreach=True)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _is_channels_last(model: DiffusionModel) -> bool:
    weight = model.network.middle[0].conv1.weight
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def test_channels_last_denoise_matches_eager_in_both_modes():
    plain, fast = _pair(channels_last=True)
    assert _is_channels_last(fast)
    images, noises, times = _batch()
    rates = plain.schedule(times)
    # predicted images are (x - noise_rate * noise) / signal_rate: the noise's rounding, scaled
    tolerances = (TOL, TOL * (rates[0] / rates[1]).max().item())
    for train in (True, False):  # batch statistics, then running statistics
        plain.train(train), fast.train(train)
        for ema in (False, True):
            a = plain.denoise(images, *rates, ema=ema)
            b = fast.denoise(images, *rates, ema=ema)
            assert b[0].is_contiguous(memory_format=torch.channels_last)
            assert a[0].abs().max() > 0.01  # BatchNorm statistics and weights make it nonzero
            for x, y, tolerance in zip(a, b, tolerances):
                assert (x - y).abs().max().item() < tolerance


def _gradients(model: DiffusionModel) -> dict[str, torch.Tensor]:
    model.network.zero_grad(set_to_none=True)
    model.noise_loss(*_batch()).backward()
    return {name: p.grad for name, p in model.network.named_parameters()}


def test_channels_last_gradients_match_eager():
    plain, fast = _pair(channels_last=True)
    grads = _gradients(plain)
    assert min(g.abs().max().item() for g in grads.values()) > 1e-4  # every weight gets a gradient
    assert _max_diff(grads, _gradients(fast)) < TOL


def test_channels_last_training_matches_eager():
    """Three AdamW steps and EMA updates: losses, weights and BatchNorm statistics agree. Adam
    divides by the gradient's running RMS, so a rounding difference in a near-zero gradient can
    move a weight by up to lr itself: weights get a tolerance of lr / 100 (still < 1e-4)."""
    plain, fast = _pair(channels_last=True)
    opt_plain, opt_fast = _optimizer(plain), _optimizer(fast)
    for step in range(3):
        assert abs(_train_step(plain, opt_plain, step) - _train_step(fast, opt_fast, step)) < TOL
    before = DiffusionModel(CONFIG.unet).state_dict()
    assert _max_diff(plain.state_dict(), before) > 1e-3  # the steps changed the weights
    assert _max_diff(plain.state_dict(), fast.state_dict()) < LR / 100


def test_state_dict_names_and_values_unchanged():
    plain, fast = _pair(channels_last=True, compile=True, compile_ema=True)
    assert list(fast.state_dict()) == list(plain.state_dict())
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert _max_diff(plain.state_dict(), fast.state_dict()) == 0.0
    # an eager model's weights load into an accelerated one and back, strictly
    fast.load_state_dict(plain.state_dict())
    plain.load_state_dict(fast.state_dict())
    assert fast.network.middle[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_accelerated_checkpoints_load_into_eager_models(tmp_path):
    plain, fast = _pair(channels_last=True)
    _train_step(fast, _optimizer(fast), 0)
    folder = checkpoint.save_pretrained(tmp_path / "model", fast, CONFIG)
    loaded, _ = checkpoint.load_model(folder)
    assert _max_diff(loaded.state_dict(), fast.state_dict()) == 0.0
    images, _, times = _batch()
    rates = fast.schedule(times)
    fast.eval(), loaded.eval()
    assert (fast.denoise(images, *rates)[1] - loaded.denoise(images, *rates)[1]).abs().max() < TOL


def test_channels_last_training_resumes_like_an_unbroken_run(tmp_path):
    """Optimiser moments come back from the checkpoint in the standard layout; the next step of
    a resumed channels-last run equals the unbroken run's."""
    _, fast = _pair(channels_last=True)
    opt = _optimizer(fast)
    _train_step(fast, opt, 0)
    run = tmp_path / "run"
    checkpoint.save_training(run, fast, CONFIG, opt, {"step": 1, "epoch": 0, "batch_in_epoch": 1})
    _, resumed = _pair(channels_last=True)
    opt_resumed = _optimizer(resumed)
    checkpoint.load_training(run, resumed, opt_resumed)
    _train_step(fast, opt, 1)
    _train_step(resumed, opt_resumed, 1)
    assert _max_diff(fast.state_dict(), resumed.state_dict()) < 1e-6


@pytest.fixture
def traced(monkeypatch):
    """torch.compile with a backend that records each graph and runs it as traced, so the test
    checks accelerate's wiring in seconds (inductor's code generation takes a minute here; the
    throughput benchmark compares its outputs with eager)."""
    graphs: list[torch.fx.GraphModule] = []
    real_compile = torch.compile

    def recording_backend(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(torch, "compile", lambda module: real_compile(module, backend=recording_backend))
    torch._dynamo.reset()
    yield graphs
    torch._dynamo.reset()


def test_compile_runs_the_trained_network_through_the_compiler(traced):
    plain, fast = _pair(channels_last=True, compile=True)
    opt_plain, opt_fast = _optimizer(plain), _optimizer(fast)
    for step in range(2):
        assert abs(_train_step(plain, opt_plain, step) - _train_step(fast, opt_fast, step)) < TOL
    assert len(traced) >= 1  # the online network's forward was traced
    convs = sum(node.target == torch.conv2d for gm in traced for node in gm.graph.nodes)
    assert convs == sum(isinstance(m, torch.nn.Conv2d) for m in fast.network.modules())
    # compiled, upsampling is shifts and sums (corolla.resample), not inductor's slow gathers
    targets = {str(node.target) for gm in traced for node in gm.graph.nodes}
    assert not any("interpolate" in t for t in targets)
    assert _max_diff(plain.state_dict(), fast.state_dict()) < LR / 100
    # sampling stays eager unless compile_ema asks for it
    count = len(traced)
    fast.eval()
    images, _, times = _batch()
    fast.denoise(images, *fast.schedule(times), ema=True)
    assert len(traced) == count


def test_compile_ema_runs_the_ema_network_through_the_compiler(traced):
    plain, fast = _pair(compile_ema=True)
    plain.eval(), fast.eval()
    images, _, times = _batch()
    rates = plain.schedule(times)
    with torch.inference_mode():
        a = plain.denoise(images, *rates)
        b = fast.denoise(images, *rates)
    assert len(traced) == 1
    assert (a[1] - b[1]).abs().max() < TOL


def test_training_and_sampling_default_to_channels_last(tmp_path):
    """The faster layout is the default (README Performance); --no-channels-last trains in NCHW."""
    from corolla.cli import parser
    from corolla.cli.options import load_model_for
    from corolla.training import build

    assert _is_channels_last(build(CONFIG, torch.device("cpu"))[0])
    assert not _is_channels_last(build(CONFIG.replace(train={"channels_last": False}), torch.device("cpu"))[0])
    args = parser().parse_args(["train", "--preset", "tiny", "--no-channels-last"])
    assert args.channels_last is False
    folder = checkpoint.save_pretrained(tmp_path / "model", DiffusionModel(CONFIG.unet), CONFIG)
    model, _, _ = load_model_for(parser().parse_args(["sample", str(folder), "--precision", "fp32"]))
    assert _is_channels_last(model) and model.precision == "fp32"


def test_folded_and_compiled_sampling_traces_once(traced):
    """The folded network caches its edge corrections on the first eager call; traced, that cache
    would be a guard, and the second call would compile the network again (minutes with inductor)."""
    plain, fast = _pair(fold=True, compile_ema=True)
    plain.eval(), fast.eval()
    images, _, times = _batch()
    rates = plain.schedule(times)
    with torch.inference_mode():
        a = plain.denoise(images, *rates)
        for _ in range(3):
            b = fast.denoise(images, *rates)
    assert len(traced) == 1
    assert (a[1] - b[1]).abs().max() < TOL
