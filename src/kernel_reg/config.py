"""The one typed configuration of a run, and the named experiment presets.

Flags and presets become a frozen ``Config``; it is saved as ``config.json`` in the run folder and is
the only input of training and evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._guards import check_choice
from .data import DATASETS
from .models import MODELS

# regularizer names, and the original's flag for each
PENALTY_REGS = ("adv-perturbation", "gradient-penalty", "loss-gradl2", "loss-gradl1", "vat", "stability", "gradtangent")
ADVERSARIAL_REGS = ("pgd-l2", "pgd-linf")
SPECTRAL_REGS = ("project-sn", "penalize-sn-pi", "penalize-sn-svd")
REGULARIZERS = PENALTY_REGS + ADVERSARIAL_REGS + SPECTRAL_REGS
ORIGINAL_FLAGS = {
    reg: "--reg_"
    + {"adv-perturbation": "adv_perturbation_penalty", "pgd-l2": "pgdl2", "pgd-linf": "pgdlinf"}.get(
        reg, reg.replace("-", "_")
    )
    for reg in REGULARIZERS
}


@dataclass(frozen=True)
class Config:
    """Everything a run depends on. Field names follow the original's flags."""

    # run
    experiment: str = "fmnist1000_vgg5"
    name: str = "tmp"
    root: str = "runs"
    device: str = "auto"
    seed: int = 42
    # data
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    n_train: int | None = 1000
    n_val: int = 10000
    n_test: int | None = None
    shuf_seed: int = 0
    aug: bool = True
    # model
    model: str = "vgg5_stable"
    width: int = 64
    # optimisation
    batch_size: int = 128
    test_batch_size: int = 512
    lr: float = 0.05
    momentum: float = 0.9
    wd: float = 0.0
    sched_step: int = 40
    sched_gamma: float = 0.5
    num_epochs: int = 501
    eval_delta: int = 5
    # regularization
    regs: tuple[str, ...] = ()
    epsilon: float = 0.1
    steps: int = 5
    linf_step_size: float = 0.01
    lmbda: float = 0.1
    lmbdast: float = 0.1
    lmbdatan: float = 0.1
    tau: float = 0.5
    kappa: float = 2.0
    nb_it: int = 2
    vat_xi: float = 1e-6
    vat_alpha: float = 1.0
    lmbdasn: float = 0.01
    # ||f||_delta^2: search only the examples of largest class-gradient norm (None: every example)
    delta_candidates: int | None = None
    stability_ex_per_batch: int | None = None
    stability_tr_per_ex: int = 8
    stability_num_deformations: int = 8
    deform_amplitude: float = 1.0
    # monitoring: the RKHS-norm bracket on a fixed probe batch
    probe_size: int = 128
    probe_epsilon: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "regs", tuple(self.regs))
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("model", self.model, tuple(MODELS))
        for reg in self.regs:
            check_choice("regularizer", reg, REGULARIZERS)
        if sum(r in ADVERSARIAL_REGS for r in self.regs) > 1:
            raise ValueError("choose at most one adversarial training: pgd-l2 or pgd-linf")
        if self.width != 64 and self.model != "vgg5_stable":
            raise ValueError(f"width applies to vgg5_stable only, got width={self.width} for {self.model}")
        positive = ("batch_size", "test_batch_size", "num_epochs", "eval_delta", "sched_step", "steps", "nb_it")
        for name in positive + ("width", "probe_size", "stability_tr_per_ex", "stability_num_deformations"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("delta_candidates", "stability_ex_per_batch"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 or None (all examples), got {value!r}")
        for name in ("lr", "epsilon", "tau", "kappa", "vat_xi", "linf_step_size", "probe_epsilon", "sched_gamma"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("momentum", "wd", "lmbda", "lmbdast", "lmbdatan", "vat_alpha", "lmbdasn", "deform_amplitude"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**values)


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


def field_types() -> dict[str, Callable[[str], Any]]:
    """Per Config field, the parser of its value from text (int, float, bool or str)."""
    parsers: dict[str, Callable[[str], Any]] = {}
    for f in dataclasses.fields(Config):
        text = str(f.type)
        parser: Callable[[str], Any] = str
        for name, kind in (("bool", parse_bool), ("int", int), ("float", float)):
            if text.startswith(name):
                parser = kind
                break
        parsers[f.name] = parser
    return parsers


def _cifar(n_train: int | None, model: str, aug: bool = True) -> dict[str, Any]:
    full = n_train is None
    return dict(
        dataset="cifar10",
        n_train=n_train,
        n_val=0 if full else 10000,
        model=model,
        aug=aug,
        lr=0.05 if model == "vgg11" else 0.1,
        sched_step=30 if full else 40,
        test_batch_size=256,
    )


def _fmnist(n_train: int | None, dataset: str = "fashion-mnist") -> dict[str, Any]:
    full = n_train is None
    return dict(
        dataset=dataset,
        n_train=n_train,
        n_val=0 if full else 10000,
        model="vgg5_stable",
        aug=False,
        lr=0.05,
        sched_step=30 if full else 40,
    )


PRESETS: dict[str, dict[str, Any]] = {
    "cifar10_vgg": _cifar(None, "vgg11"),
    "cifar10_resnet": _cifar(None, "resnet18"),
    "cifar10small5000_vgg": _cifar(5000, "vgg11"),
    "cifar10small5000_resnet": _cifar(5000, "resnet18"),
    "cifar10small1000_vgg": _cifar(1000, "vgg11"),
    "cifar10small1000_resnet": _cifar(1000, "resnet18"),
    "cifar10_vgg_no_aug": _cifar(None, "vgg11", aug=False),
    "cifar10_resnet_no_aug": _cifar(None, "resnet18", aug=False),
    "cifar10small_vgg_no_aug": _cifar(5000, "vgg11", aug=False),
    "cifar10small_resnet_no_aug": _cifar(5000, "resnet18", aug=False),
    "cifar10small1000_vgg_no_aug": _cifar(1000, "vgg11", aug=False),
    "cifar10small1000_resnet_no_aug": _cifar(1000, "resnet18", aug=False),
    "fmnist300_vgg5": _fmnist(300),
    "fmnist1000_vgg5": _fmnist(1000),
    "fmnist_vgg5": _fmnist(None),
    "mnist300_vgg5": _fmnist(300, "mnist"),
    "mnist1000_vgg5": _fmnist(1000, "mnist"),
    "mnist_vgg5": _fmnist(None, "mnist"),
}


def preset_config(experiment: str, **overrides: Any) -> Config:
    """The preset's defaults, then ``overrides`` (None values are ignored, as unset flags)."""
    check_choice("experiment", experiment, tuple(PRESETS))
    values = {**PRESETS[experiment], **{k: v for k, v in overrides.items() if v is not None}}
    return Config(experiment=experiment, **values)


# the hyperparameters that set each regularizer's strength
REG_PARAMS: dict[str, tuple[str, ...]] = {
    "adv-perturbation": ("epsilon",),
    "gradient-penalty": ("lmbda",),
    "loss-gradl2": ("lmbda",),
    "loss-gradl1": ("lmbda",),
    "vat": ("vat_alpha", "epsilon"),
    "stability": ("lmbdast",),
    "gradtangent": ("lmbdatan",),
    "pgd-l2": ("epsilon",),
    "pgd-linf": ("epsilon",),
    "project-sn": ("tau",),
    "penalize-sn-pi": ("lmbdasn",),
    "penalize-sn-svd": ("lmbdasn",),
}


def hyperparameters(config: Config) -> dict[str, Any]:
    """The strengths of the run's regularizers (and weight decay, and the ||f||_delta^2 search's candidates
    when restricted), e.g. {'lmbda': 0.1, 'tau': 1.5}."""
    names = [p for reg in config.regs for p in REG_PARAMS[reg]] + (["wd"] if config.wd > 0 else [])
    if "adv-perturbation" in config.regs and config.delta_candidates is not None:
        names.append("delta_candidates")
    return {name: getattr(config, name) for name in dict.fromkeys(names)}


def hyperparameter_text(config: Config) -> str:
    """``hyperparameters`` as 'lmbda=0.1, tau=1.5' ('' without any)."""
    return ", ".join(f"{k}={v:g}" for k, v in hyperparameters(config).items())


def method_label(config: Config) -> str:
    """A short name of the regularization of a run, e.g. 'gradient-penalty+project-sn'."""
    labels = list(config.regs)
    if config.wd > 0:
        labels.append("wd")
    return "+".join(labels) or "none"
