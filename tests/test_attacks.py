"""PGD attacks (src/adamp_repro/train/attacks.py): threat set, the codebase's rule, modes, grads, determinism.

A tiny randomly initialised CNN with BN on random images is enough here: these are properties of the attack,
not of a trained model (those are in test_adversarial.py).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from adamp_repro.train.attacks import PGD, module_modes

EPS = {"linf": 8 / 255, "l2": 0.5}

pytestmark = pytest.mark.usefixtures("one_thread")  # bitwise-reproducible numbers (conftest.py)


class TinyNet(nn.Module):
    """[0, 1] inputs, Normalize inside, BN after each conv (the contract of the project's models)."""

    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1))
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * width, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features((x - self.mean) / self.std)


@pytest.fixture
def model() -> TinyNet:
    torch.manual_seed(0)
    net = TinyNet()
    net.train()
    with torch.no_grad():  # non-trivial running statistics, so eval and train mode really differ
        for _ in range(3):
            net(torch.rand(32, 3, 16, 16))
    return net


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 16, 16, generator=g)
    x[:2] = 0.0  # pixels at the box edges, where the clip to [0, 1] binds
    x[2:4] = 1.0
    return x, torch.randint(0, 10, (16,), generator=g)


def attack(norm: str, **kw) -> PGD:
    settings = {"eps": EPS[norm], "step_size": EPS[norm] / 4, "steps": 5, "random_start": True, **kw}
    return PGD(norm=norm, **settings)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def in_threat_set(x_adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float) -> None:
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0  # exact: the box is a clip
    if norm == "linf":
        # Exact in float: every coordinate within the rounded bounds [x - eps, x + eps] the attack clips to.
        assert torch.all(x_adv >= (x - eps).clamp(min=0.0)) and torch.all(x_adv <= (x + eps).clamp(max=1.0))
        assert (x_adv - x).abs().max() <= eps + 1e-7
    else:
        # float32 rounding of the rescale and of x + delta: a relative 1e-5 over ~800 coordinates.
        norms = torch.linalg.vector_norm((x_adv - x).flatten(1), dim=1)
        assert norms.max() <= eps * (1 + 1e-5)


# ------------------------------------------------------------------------------------------- threat set
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("step_rule", ["sign", "steepest"])
@pytest.mark.parametrize(
    "steps,random_start,restarts", [(0, True, 1), (1, True, 1), (7, False, 1), (3, True, 3)]
)
def test_result_inside_eps_ball_and_unit_box(model, batch, norm, step_rule, steps, random_start, restarts):
    x, y = batch
    pgd = attack(
        norm,
        step_rule=step_rule,
        steps=steps,
        random_start=random_start,
        restarts=restarts,
        step_size=EPS[norm],
    )  # a step as long as eps: the projection binds at every step
    x_adv = pgd(model, x, y, gen())
    in_threat_set(x_adv, x, norm, EPS[norm])
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    if steps > 0 or random_start:
        assert not torch.equal(x_adv, x)


def test_l2_steps_reach_the_sphere(model, batch):
    # The codebase's l2 sign step (2/255 per pixel) is longer than a small ball, so every iterate sits on it.
    x, y = batch
    x = x.clamp(0.2, 0.8)  # away from the box, so the clip does not shorten the perturbation
    pgd = attack("l2", eps=0.1, step_size=2 / 255, steps=3, random_start=False)
    norms = torch.linalg.vector_norm((pgd(model, x, y) - x).flatten(1), dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, 0.1), rtol=1e-5, atol=0)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_zero_steps_without_random_start_returns_the_input(model, batch, norm):
    x, y = batch
    assert torch.equal(attack(norm, steps=0, random_start=False)(model, x, y), x)
    assert torch.equal(attack(norm, eps=0.0, step_size=0.1)(model, x, y, gen()), x)


def test_channels_last_input_gives_the_same_examples(model, batch):
    x, y = batch
    pgd = attack("l2")
    x_cl = x.contiguous(memory_format=torch.channels_last)
    a, b = pgd(model, x, y, gen()), pgd(model, x_cl, y, gen())
    assert b.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ the codebase's rule
def codebase_pgd(model, x, y, eps, alpha, steps, norm, noise):
    """The update of FastGradientSignUntargeted.perturb (docs/paper.md §3), written out plainly."""
    model.eval()
    x_adv = (x + noise).clamp(0, 1) if noise is not None else x.clone()
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        if norm == "linf":
            x_adv = torch.max(torch.min(x_adv, x + eps), x - eps)
        else:
            dist = (x_adv - x).flatten(1)
            dist_norm = dist.norm(dim=1, keepdim=True)
            mask = (dist_norm > eps).view(-1, 1, 1, 1).float()
            scaled = x + (dist / dist_norm * eps).view_as(x)
            x_adv = scaled * mask + x_adv * (1 - mask)
        x_adv = x_adv.clamp(0, 1)
    model.train()
    return x_adv.detach()


@pytest.mark.parametrize("norm,eps", [("linf", 4 / 255), ("l2", 80 / 255)])
@pytest.mark.parametrize("random_start", [True, False])
def test_sign_rule_matches_the_codebase_update(model, batch, norm, eps, random_start):
    x, y = batch
    noise = torch.empty_like(x).uniform_(-eps, eps, generator=gen(3)) if random_start else None
    expected = codebase_pgd(model, x, y, eps, 2 / 255, 10, norm, noise)
    pgd = PGD(norm=norm, eps=eps, step_size=2 / 255, steps=10, random_start=random_start)
    torch.testing.assert_close(pgd(model, x, y, gen(3)), expected, rtol=0, atol=1e-6)


def test_steepest_l2_takes_normalised_gradient_steps(model, batch):
    x, y = batch
    x = x.clamp(0.2, 0.8)
    model.eval()
    x_var = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_var), y, reduction="sum"), x_var)
    unit = grad / torch.linalg.vector_norm(grad.flatten(1), dim=1).view(-1, 1, 1, 1)
    pgd = PGD(norm="l2", eps=1.0, step_size=0.05, steps=1, random_start=False, step_rule="steepest")
    torch.testing.assert_close(pgd(model, x, y), (x + 0.05 * unit).clamp(0, 1), rtol=0, atol=1e-6)


def test_steepest_is_the_sign_rule_for_linf(model, batch):
    x, y = batch
    a = attack("linf", step_rule="sign")(model, x, y, gen())
    b = attack("linf", step_rule="steepest")(model, x, y, gen())
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------ modes, buffers and grads
class ModeRecorder:
    """Records each BN layer's training flag at every forward during the attack."""

    def __init__(self, model: nn.Module):
        self.seen: list[bool] = []
        self.handles = [
            m.register_forward_pre_hook(self.hook) for m in model.modules() if isinstance(m, nn.BatchNorm2d)
        ]

    def hook(self, module, args):
        self.seen.append(module.training)


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
@pytest.mark.parametrize("start", ["train", "eval", "mixed"])
def test_attack_runs_in_bn_mode_and_restores_every_flag_and_buffer(model, batch, bn_mode, start):
    x, y = batch
    model.train(start != "eval")
    if start == "mixed":
        model.features[1].eval()  # e.g. a frozen BN layer inside a training model
    flags = [m.training for m in model.modules()]
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    recorder = ModeRecorder(model)
    attack("linf", bn_mode=bn_mode, restarts=2, keep_best=True)(model, x, y, gen())
    assert recorder.seen and set(recorder.seen) == {bn_mode == "train"}
    assert [m.training for m in model.modules()] == flags
    for key, value in model.state_dict().items():  # BN running stats untouched in both modes
        assert torch.equal(value, buffers[key]), key


def test_modes_and_buffers_restored_when_the_forward_raises(model, batch):
    x, y = batch
    model.train()
    model.features[5].eval()
    flags = [m.training for m in model.modules()]
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    calls = {"n": 0}

    def fail_on_third(module, args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")

    handle = model.register_forward_pre_hook(fail_on_third)
    with pytest.raises(RuntimeError, match="boom"):
        attack("linf", bn_mode="train")(model, x, y, gen())
    handle.remove()
    assert [m.training for m in model.modules()] == flags
    for key, value in model.state_dict().items():
        assert torch.equal(value, buffers[key]), key


def test_module_modes_restores_per_module_flags(model):
    model.train()
    model.features[1].eval()
    with module_modes(model, training=False):
        assert not any(m.training for m in model.modules())
    assert model.training and not model.features[1].training and model.features[4].training


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_parameter_grads_untouched(model, batch, bn_mode):
    x, y = batch
    params = list(model.parameters())
    for i, p in enumerate(params):
        p.grad = None if i % 2 else torch.full_like(p, 0.5 + i)
    before = [None if p.grad is None else p.grad.clone() for p in params]
    attack("l2", bn_mode=bn_mode, restarts=2)(model, x, y, gen())
    for p, g in zip(params, before):
        assert (p.grad is None) if g is None else torch.equal(p.grad, g)


@pytest.mark.skipif(
    not dist.is_available() or dist.is_initialized(), reason="needs a free default process group"
)
def test_ddp_wrapped_model_attacks_like_the_plain_model_and_trains(model, batch, tmp_path):
    x, y = batch
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(copy.deepcopy(model))
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
        pgd = attack("linf", bn_mode="train")
        for _ in range(2):  # two full steps: the attack leaves DDP's reducer ready for the next iteration
            ddp.train()
            x_adv = pgd(ddp, x, y, gen())
            assert ddp.training and torch.equal(x_adv, pgd(ddp.module, x, y, gen()))
            loss = F.cross_entropy(ddp(x_adv), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        dist.destroy_process_group()


def test_no_host_sync_in_the_loop(model, batch, monkeypatch):
    # `.item()` / `.tolist()` / `bool(tensor)` on a GPU would stall the step on a device-to-host copy.
    x, y = batch

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync inside the attack")

    monkeypatch.setattr(torch.Tensor, "item", forbidden)
    monkeypatch.setattr(torch.Tensor, "tolist", forbidden)
    attack("l2", step_rule="steepest", restarts=2, keep_best=True)(model, x, y, gen())
    attack("linf")(model, x, y, gen())


def test_works_under_no_grad_and_refuses_inference_mode(model, batch):
    x, y = batch
    with torch.no_grad():
        x_adv = attack("linf")(model, x, y, gen())
    assert not torch.equal(x_adv, x)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        attack("linf")(model, x, y, gen())


def test_frozen_parameters_are_fine(model, batch):
    # The trainer's EMA copy has requires_grad=False everywhere; the attack only needs the input's gradient.
    x, y = batch
    model.requires_grad_(False)
    assert not torch.equal(attack("l2")(model, x, y, gen()), x)


# ---------------------------------------------------------------------------------- randomness, restarts
def test_deterministic_given_a_generator(model, batch):
    x, y = batch
    pgd = attack("linf")
    assert torch.equal(pgd(model, x, y, gen(5)), pgd(model, x, y, gen(5)))
    assert not torch.equal(pgd(model, x, y, gen(5)), pgd(model, x, y, gen(6)))
    torch.manual_seed(9)
    a = pgd(model, x, y)  # no generator: torch's global RNG
    torch.manual_seed(9)
    assert torch.equal(a, pgd(model, x, y))


def test_random_start_distribution(model, batch):
    x, y = batch
    x = x.clamp(0.1, 0.9)
    eps = 0.05
    box = PGD(norm="linf", eps=eps, step_size=0.0, steps=0, random_start=True)(model, x, y, gen())
    delta = box - x
    assert delta.abs().max() <= eps + 1e-7 and delta.abs().mean() > eps / 2 - 0.005  # uniform(-eps, eps)
    sphere = PGD(norm="l2", eps=eps, step_size=0.0, steps=0, random_start=True, step_rule="steepest")
    norms = torch.linalg.vector_norm((sphere(model, x, y, gen()) - x).flatten(1), dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, eps), rtol=1e-5, atol=0)


def predicted(model, x):
    """Labels the model gets right on x: every sample then starts correct and must be attacked to be fooled."""
    model.eval()
    with torch.no_grad():
        return model(x).argmax(1)


def fooled(model, x_adv, y):
    model.eval()
    with torch.no_grad():
        return model(x_adv).argmax(1).ne(y)


@pytest.mark.parametrize("kw", [{"restarts": 4}, {"keep_best": True}, {"restarts": 3, "keep_best": True}])
def test_restarts_and_keep_best_only_add_fooled_samples(model, batch, kw):
    # Restart 0 without random start is the single attack, so the worst case fools a superset of its samples.
    x, _ = batch
    y = predicted(model, x)
    base = attack("linf", steps=3, random_start=False, step_size=2 / 255)
    strong = attack("linf", steps=3, random_start=False, step_size=2 / 255, **kw)
    single, worst = fooled(model, base(model, x, y), y), fooled(model, strong(model, x, y, gen()), y)
    assert torch.all(worst | ~single) and worst.any()


def test_restarts_after_the_first_start_at_random_points(model, batch):
    # steps=0: the candidates are x (restart 0, no random start) and the random starts of restarts 1 and 2.
    x, y = batch
    pgd = PGD(norm="linf", eps=0.1, step_size=0.0, steps=0, random_start=False, restarts=3)
    x_adv = pgd(model, x, y, gen())
    assert not torch.equal(x_adv, x)
    in_threat_set(x_adv, x, "linf", 0.1)


def test_keep_best_returns_the_highest_loss_iterate(model, batch):
    # With a step as long as eps the iterates jump around the ball; the kept one is never worse than the last.
    x, _ = batch
    y = predicted(model, x)
    settings = {"norm": "linf", "eps": 8 / 255, "step_size": 8 / 255, "steps": 6, "random_start": False}
    last, best = PGD(**settings)(model, x, y), PGD(**settings, keep_best=True)(model, x, y)
    model.eval()
    with torch.no_grad():
        logits_last, logits_best = model(last), model(best)
    loss_last = F.cross_entropy(logits_last, y, reduction="none")
    loss_best = F.cross_entropy(logits_best, y, reduction="none")
    fooled_last, fooled_best = logits_last.argmax(1).ne(y), logits_best.argmax(1).ne(y)
    assert torch.all(fooled_best | ~fooled_last)
    neither = ~fooled_best & ~fooled_last
    assert neither.any() and torch.all(loss_best[neither] >= loss_last[neither] - 1e-5)


# ----------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kw,message",
    [
        ({"norm": "l1"}, r"Invalid attack norm: 'l1'; expected one of \('linf', 'l2'\)"),
        ({"eps": -0.1}, r"Invalid attack eps: -0.1; expected a finite number >= 0"),
        ({"eps": float("nan")}, r"Invalid attack eps: nan"),
        ({"step_size": -1.0}, r"Invalid attack step_size: -1.0"),
        ({"steps": -1}, r"Invalid attack steps: -1; expected an integer >= 0"),
        ({"steps": 2.5}, r"Invalid attack steps: 2.5"),
        ({"restarts": 0}, r"Invalid attack restarts: 0; expected an integer >= 1"),
        ({"bn_mode": "frozen"}, r"Invalid attack bn_mode: 'frozen'; expected one of \('eval', 'train'\)"),
        ({"step_rule": "adam"}, r"Invalid attack step_rule: 'adam'; expected one of \('sign', 'steepest'\)"),
        ({"random_start": "yes"}, r"Invalid attack random_start: 'yes'; expected true or false"),
    ],
)
def test_invalid_settings_name_the_value_and_the_allowed_ones(kw, message):
    settings = {"norm": "linf", "eps": 0.1, "step_size": 0.01, "steps": 1, "random_start": False, **kw}
    with pytest.raises(ValueError, match=message):
        PGD(**settings)


def test_describe_lists_every_setting():
    pgd = PGD(
        norm="l2",
        eps=80 / 255,
        step_size=2 / 255,
        steps=10,
        random_start=True,
        restarts=2,
        step_rule="sign",
        bn_mode="train",
        keep_best=True,
    )
    d = pgd.describe()
    for field in (
        "norm",
        "eps",
        "step_size",
        "steps",
        "random_start",
        "restarts",
        "step_rule",
        "bn_mode",
        "keep_best",
    ):
        assert d[field] == getattr(pgd, field)
    assert d["eps_x255"] == 80.0 and d["step_size_x255"] == 2.0 and d["direction"] == "sign(g)"
    assert "uniform(-eps, eps)" in d["start"] and "restored" in d["bn_running_stats"]
