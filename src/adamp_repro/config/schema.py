"""The config schema: the type and range of every key of the config tree, and which subtrees are open.

Checked on the resolved config before any work starts, with pydantic in strict mode: a bool is a bool (the
string ``'false'`` is refused, where ``bool('false')`` would be true), an int is an int (not ``2.0`` or
``true``), a number is finite, a choice is one of its values, and a key the schema does not name is refused
with the nearest valid name. Open subtrees (``model.kwargs``, ``recipe``, ``hydra``, an optimizer's own
keywords beyond the common ones, every keyword of an optimizer given by ``_target_`` or ``timm``) take any
key; their numbers must still be finite. Each group with variants
(``dataset`` by ``family``: in_memory, image_folder, text; ``scheduler``, ``task``, ``logger`` by ``name``) has one model per variant. A tag
renamed later keeps its old spelling readable: the tag's Literal names the current spelling first, then the old
ones (``family: Literal["in_memory", "cifar"]``), and a refused tag names the current spellings.

A new config key is one field here (with its range); the builders that read the key keep their own checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from adamp_repro.config.messages import check_finite, describe
from adamp_repro.errors import ConfigError
from adamp_repro.optim.hyperparams import COMMON, Hyper, Interval

SCALES = ("smoke", "mini", "paper")

NAME = r"^[^/]+$"  # run and experiment names become folder names


def _bounds(ge: float | None, gt: float | None, le: float | None, lt: float | None) -> str:
    low = f"[{ge}" if ge is not None else f"({gt}" if gt is not None else None
    high = f"{le}]" if le is not None else f"{lt})" if lt is not None else None
    if low and high:
        return f" in {low}, {high}"
    if low:
        return f" >= {ge}" if ge is not None else f" > {gt}"
    if high:
        return f" <= {le}" if le is not None else f" < {lt}"
    return ""


def number(default: Any = ..., *, ge=None, gt=None, le=None, lt=None) -> Any:
    """A finite float (an int is welcome) within the bounds."""
    return Field(default, ge=ge, gt=gt, le=le, lt=lt, description=f"a finite number{_bounds(ge, gt, le, lt)}")


def integer(default: Any = ..., *, ge: int | None = None, gt: int | None = None) -> Any:
    text = "a positive integer" if gt == 0 else f"an integer{_bounds(ge, gt, None, None)}"
    return Field(default, ge=ge, gt=gt, description=text)


def flag(default: Any = ...) -> Any:
    return Field(default, description="true or false")


def text(default: Any = ..., *, pattern: str | None = None, description: str = "a string") -> Any:
    return Field(default, pattern=pattern, description=description)


# Element types of lists.
Fraction = Annotated[float, Field(gt=0, le=1)]
Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]


class Closed(BaseModel):
    """A subtree whose keys are all named here."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class Open(BaseModel):
    """A subtree that also takes keys not named here (checked by their consumer)."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


# ------------------------------------------------------------------------------------------------ groups
class Model(Closed):
    name: str = text(description="a timm model name")
    pretrained: bool = flag(False)
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="a mapping of timm.create_model keywords"
    )
    normalize: bool = flag(True)
    input_size: list[PositiveInt] | None = Field(
        None, min_length=3, max_length=3, description="[C, H, W] as positive integers"
    )


def within(hyper: Hyper, default: Any = ...) -> Any:
    """A field whose range is ``optim.hyperparams``'s for this keyword (the one owner of that range)."""
    allowed = hyper.allowed
    assert isinstance(allowed, Interval), hyper.key
    low = {"gt": allowed.low} if allowed.low_open else {"ge": allowed.low}
    high = {} if allowed.high is None else {"lt": allowed.high} if allowed.high_open else {"le": allowed.high}
    return Field(default, **low, **high, description=allowed.describe())


class Optimizer(Open):
    """The keys every optimizer config has, and the types of the well-known keywords where present. Which
    keywords a registered optimizer takes, and the range of each, are ``optim.hyperparams``'s (one owner: the
    classes read it too); ``config.combinations`` checks them per optimizer, as ranges differ between classes
    (AdamP refuses eps = 0, SGDP takes it)."""

    schema_tag: ClassVar[str] = "registered"

    name: str = text(description="an optimizer name")
    lr: float = within(COMMON["lr"])
    weight_decay: float = within(COMMON["weight_decay"], 0.0)
    no_decay_bias_norm: bool = flag(False)
    foreach: bool | None = flag(None)
    momentum: float = number(0.0)
    dampening: float = number(0.0)
    nesterov: bool = flag(False)
    betas: list[float] = Field([0.9, 0.999], min_length=2, max_length=2, description="two finite numbers")
    eps: float = number(1e-8)
    delta: float = number(0.1)
    wd_ratio: float = number(0.1)
    compile: bool = flag(False)
    project_buffer: bool = flag(True)
    projection: bool = flag(True)
    scale_invariant_weight_decay: float | None = Field(
        None,
        ge=0,
        description="null, or a finite number >= 0 (the decay of the weights followed by a norm layer)",
    )


class ExternalOptimizer(Open):
    """An optimizer config that names its own class (``_target_: package.module.Class`` or ``timm: <name>``):
    the keys the suite reads are typed here, every other key is a keyword of that class (open: the factory
    checks them against the class's signature, ``optim.factory.check_optimizer_config``)."""

    schema_tag: ClassVar[str] = "external"

    name: str = text(pattern=NAME, description="an optimizer name without '/'")
    timm: str | None = text(None, description="a timm optimizer name (timm.optim.list_optimizers())")
    lr: float = within(COMMON["lr"])
    weight_decay: float = within(COMMON["weight_decay"], 0.0)
    no_decay_bias_norm: bool = flag(False)
    foreach: bool | None = flag(None)
    scale_invariant_weight_decay: float | None = Field(
        None,
        ge=0,
        description="null, or a finite number >= 0 (the decay of the weights followed by a norm layer)",
    )


def _optimizer_form(data: Any) -> str:
    """Which optimizer model checks ``data``: a config naming its own class, or a registered name."""
    if isinstance(data, dict) and ("_target_" in data or "timm" in data):
        return "external"
    return "registered"


class Validation(Closed):
    """``dataset.validation``: a class-balanced split of ``size`` training images held out by ``seed`` (fixed,
    not the run's seed); the run trains on the rest and evaluates on it instead of the test set."""

    size: int = integer(gt=0)
    seed: int = integer(0, ge=0)


class InMemoryData(Closed):
    """``family: in_memory``: small images held in memory as tensors (adamp_repro.data.in_memory). Old
    spelling, still read: ``cifar``."""

    name: str = text()
    family: Literal["in_memory", "cifar"]
    root: str | None = text()
    format: Literal["auto", "embedded", "jpeg_npz", "torchvision", "imagefolder"] = "auto"
    embedded_test: Literal["mini", "full"] = "mini"
    download: bool = flag(False)
    torchvision_name: str | None = text(None)
    num_classes: int = integer(gt=0)
    image_size: int = integer(gt=0)
    batch_size: int = integer(gt=0)
    eval_batch_size: int = integer(gt=0)
    crop_padding: int = integer(ge=0)
    hflip: bool = flag()
    mean: list[float] = Field(min_length=3, max_length=3, description="three finite numbers")
    std: list[Positive] = Field(min_length=3, max_length=3, description="three numbers > 0")
    label: str = text()
    how_to_obtain: str | None = text(None)
    validation: Validation | None = None


class ImageFolderData(Closed):
    """``family: image_folder``: ImageFolder trees read by DataLoader workers (adamp_repro.data.image_folder).
    Old spelling, still read: ``imagenet``."""

    name: str = text()
    family: Literal["image_folder", "imagenet"]
    root: str | None = text()
    num_classes: int = integer(gt=0)
    batch_size: int = integer(gt=0)
    eval_batch_size: int = integer(gt=0)
    crop_size: int = integer(gt=0)
    resize_size: int = integer(gt=0)
    rrc_scale: list[Fraction] = Field(min_length=2, max_length=2, description="two numbers in (0, 1]")
    rrc_ratio: list[Positive] = Field(min_length=2, max_length=2, description="two numbers > 0")
    hflip: bool = flag()
    interpolation: Literal["bilinear", "bicubic"]
    num_workers: int = integer(ge=0)
    skip_unreadable_images: bool = flag(False)
    mean: list[float] = Field(min_length=3, max_length=3, description="three finite numbers")
    std: list[Positive] = Field(min_length=3, max_length=3, description="three numbers > 0")
    label: str = text()
    how_to_obtain: str | None = text(None)


class TextData(Closed):
    """``family: text``: a token stream from a text file, cut into windows (adamp_repro.data.text)."""

    name: str = text()
    family: Literal["text"]
    path: str | None = text(
        description="a text file (char) or a folder of wiki.*.tokens (word); null = embedded"
    )
    tokenization: Literal["char", "word"]
    splits: list[Fraction] | None = Field(
        None, min_length=3, max_length=3, description="three fractions (train, validation, test) or null"
    )
    eval_split: Literal["validation", "test"] = "test"
    context: int = integer(gt=0)
    windows_per_epoch: int | None = integer(None, gt=0)
    batch_size: int = integer(gt=0)
    eval_batch_size: int = integer(gt=0)
    label: str = text()
    how_to_obtain: str | None = text(None)


class Warmup(Closed):
    warmup_epochs: float = number(0.0, ge=0)
    warmup_start_factor: float = number(0.1, ge=0, le=1)


class ConstantSchedule(Warmup):
    name: Literal["constant"]


class CosineSchedule(Warmup):
    name: Literal["cosine"]
    min_lr_factor: float = number(0.0, ge=0, le=1)


class StepSchedule(Warmup):
    name: Literal["step"]
    step_frac: float = number(gt=0, le=1)
    gamma: float = number(0.1, gt=0, le=1)


class MultiStepSchedule(Warmup):
    name: Literal["multistep"]
    milestones_frac: list[Fraction] = Field(description="increasing fractions of the run in (0, 1]")
    gamma: float = number(0.1, gt=0, le=1)


class ClassificationTask(Closed):
    name: Literal["classification"]
    label_smoothing: float = number(0.0, ge=0, lt=1)
    cutmix_alpha: float = number(0.0, ge=0)
    cutmix_prob: float = number(0.0, ge=0, le=1)


class Attack(Closed):
    steps: int = integer(ge=0)
    step_size: float = number(ge=0)
    step_rule: Literal["sign", "steepest"]
    random_start: bool = flag()
    restarts: int = integer(ge=1)


class TrainAttack(Attack):
    bn_mode: Literal["eval", "train"]


class EvalAttack(Attack):
    keep_best: bool = flag()


AUTOATTACK_NAMES = Literal["apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square"]


class AutoAttackCheck(Closed):
    enabled: bool = flag()
    version: Literal["standard", "plus", "rand", "custom"] = "standard"
    attacks: list[AUTOATTACK_NAMES] | None = None  # type: ignore[valid-type]
    subset: int | None = integer(None, gt=0)
    batch_size: int = integer(250, gt=0)


class EpsSweepCheck(AutoAttackCheck):
    eps_factors: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=list, description="a list of finite numbers >= 0"
    )


class AdversarialTask(Closed):
    name: Literal["adversarial"]
    norm: Literal["linf", "l2"]
    eps: float = number(ge=0)
    eval_seed: int = integer(ge=0)
    train_attack: TrainAttack
    eval_attack: EvalAttack
    autoattack: AutoAttackCheck
    eps_sweep: EpsSweepCheck


class LanguageModelTask(Closed):
    name: Literal["language_model"]
    tokenization: Literal["char", "word"] = "char"


class ExternalTask(Open):
    """A task config that names its own class (``_target_: package.module.Class``): every key but ``name`` is a
    keyword of that class (open: ``train.tasks.registry`` checks them against its signature)."""

    name: str = text(pattern=NAME, description="a task name without '/'")


def _task_form(data: Any) -> str:
    """Which task model checks ``data``: a config naming its own class, or one of the suite's tasks by name."""
    if isinstance(data, dict) and "_target_" in data:
        return "external"
    return str(data.get("name")) if isinstance(data, dict) else "classification"


class Scale(Closed):
    name: Literal[SCALES]  # type: ignore[valid-type]
    epochs: int = integer(gt=0)
    train_subset: int | None = integer(gt=0)
    eval_subset: int | None = integer(gt=0)
    max_steps_per_epoch: int | None = integer(gt=0)
    autoattack_subset: int | None = integer(None, gt=0)  # task=adversarial: samples AutoAttack attacks
    eps_sweep_subset: int | None = integer(None, gt=0)  # task=adversarial: samples of the eps sweep


class NoLogger(Closed):
    name: Literal["none"]


class WandbLogger(Closed):
    name: Literal["wandb"]
    project: str = text()
    entity: str | None = text(None)
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    group: str | None = text(None)
    job_type: str = text("train")
    tags: list[str] = Field(default_factory=list, description="a list of strings")


class Table(Closed):
    id: str = text()
    block: str = text()
    model: str = text()


class Train(Closed):
    grad_clip_norm: float | None = number(gt=0)
    amp: Literal["none", "bf16", "fp16"]
    channels_last: Literal["auto"] | bool = Field(description="auto, true or false")
    ema_decay: float | None = number(gt=0, lt=1)
    log_every_n_steps: int = integer(gt=0)
    eval_every: int = integer(gt=0)
    checkpoint: bool = flag()


class Diagnostics(Closed):
    enabled: bool = flag()
    every_n_steps: int = integer(gt=0)


class Distributed(Closed):
    backend: Literal["auto", "nccl", "gloo"]
    sync_batchnorm: bool = flag()
    lr_scaling: Literal["none", "linear"]
    reference_batch: int = integer(gt=0)


class Study(Closed):
    """``study``: the run belongs to a tuning study (``adamp_repro.tune``). ``points`` is the study's table of
    drawn values ({<optimizer>: [{<key>: value}, ...]}) that a trial looks its values up in, and ``chosen``
    ({<optimizer>: trial}) the trials its confirmation reruns; neither is hashed (the resolved optimizer values
    are)."""

    name: str = text(pattern=NAME, description="a name without '/'")
    role: Literal["trial", "default", "tuned"]
    trial: int | None = integer(None, ge=0)
    points: dict[str, list[dict[str, Any]]] | None = None
    chosen: dict[str, int] | None = None


class RunConfig(Closed):
    """The composed ``configs/train.yaml``: every top-level key."""

    seed: int = integer(ge=0)
    epochs: int = integer(gt=0)
    mini_epochs: int = integer(gt=0)
    recipe: dict[str, dict[str, Any]] = Field(description="a mapping {<optimizer name>: {<key>: <value>}}")
    experiment_name: str = text(pattern=NAME, description="a name without '/'")
    table: Table
    output_root: str = text()
    run_name: str = text(pattern=NAME, description="a name without '/'")
    resume: Literal["auto", "never"]
    allow_code_change: bool = flag(False)
    device: str = text(pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N")
    deterministic: bool = flag()
    threads: int | None = integer(gt=0)
    progress: Literal["auto"] | bool = Field(description="auto, true or false")
    train: Train
    diagnostics: Diagnostics
    distributed: Distributed
    model: Model
    dataset: InMemoryData | ImageFolderData | TextData = Field(discriminator="family")
    optimizer: Annotated[
        Annotated[Optimizer, Tag("registered")] | Annotated[ExternalOptimizer, Tag("external")],
        Discriminator(_optimizer_form),
    ]
    scheduler: ConstantSchedule | CosineSchedule | StepSchedule | MultiStepSchedule = Field(
        discriminator="name"
    )
    task: Annotated[
        Annotated[ClassificationTask, Tag("classification")]
        | Annotated[AdversarialTask, Tag("adversarial")]
        | Annotated[LanguageModelTask, Tag("language_model")]
        | Annotated[ExternalTask, Tag("external")],
        Discriminator(_task_form),
    ]
    scale: Scale
    logger: NoLogger | WandbLogger = Field(discriminator="name")
    study: Study | None = None
    hydra: dict[str, Any] | None = None


# ------------------------------------------------------------------------------------------------ checking
def check_schema(data: Mapping[str, Any]) -> None:
    """Raise ConfigError (one line: key, value, what is allowed) at the first value the schema refuses."""
    try:
        RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(exc.errors()[0], data, RunConfig)) from None
    check_finite({k: v for k, v in data.items() if k != "hydra"})
