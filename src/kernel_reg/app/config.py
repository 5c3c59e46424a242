"""The one typed configuration of a run, and the named experiment presets.

Flags and presets become a frozen ``Config``; it is saved as ``config.json`` in the run folder and is
the only input of training and evaluation. The regularizers of a run are ``RegSetting`` entries, each
with the values of all its hyperparameters (see ``regularizers.REGISTRY``).

A *key* addresses one value of a config: a field (``lr``), a regularizer hyperparameter
(``gradient-penalty.lmbda``), or an original shared flag or hyperparameter name (``lmbda``,
``epsilon``) that sets it in every selected regularizer taking it (see ``regularizers.targets``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from ..arguments import check_choice
from ..models import ACTIVATIONS, MODELS, WIDTH_MODELS
from . import regularizers
from .data import DATASETS, EMBEDDED
from .regularizers import Value

# fields that say where and how a run executes, not what it computes
EXECUTION_FIELDS = ("name", "root", "device")
# fields that only draw another sample of the same setting
SEED_FIELDS = ("seed", "shuf_seed")
OPTIMIZERS = ("sgd", "adam")
NORMALIZATIONS = ("operator", "orthogonal")
MARGIN_RULES = ("global", "pairwise")
# the augmentation's transforms: "auto" (the data set's own) or a '+'-joined choice of these
AUG_TRANSFORMS = ("crop", "flip", "deform")


@dataclass(frozen=True)
class RegSetting:
    """One regularizer of a run and the values of all its hyperparameters, in the registry's order."""

    name: str
    params: tuple[tuple[str, Value], ...] = ()

    def __post_init__(self) -> None:
        entry = regularizers.lookup(self.name)
        given = dict(self.params)
        for key in given:
            entry.param(key)  # names the valid hyperparameters when unknown
        values = {p.name: p.check(given.get(p.name, p.default), self.name) for p in entry.params}
        object.__setattr__(self, "params", tuple(values.items()))

    def __getitem__(self, key: str) -> Value:
        return dict(self.params)[key]

    def replace(self, **values: Value) -> RegSetting:
        return RegSetting(self.name, tuple({**dict(self.params), **values}.items()))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dict(self.params)}

    @classmethod
    def coerce(cls, value: str | Mapping[str, Any] | RegSetting) -> RegSetting:
        """A setting from its name (default hyperparameters), a mapping {"name": ..., param: value} or itself."""
        if isinstance(value, RegSetting):
            return value
        if isinstance(value, str):
            return cls(value)
        values = dict(value)
        if "name" not in values:
            raise ValueError(f"a regularizer entry needs a 'name', got {values!r}")
        name = values.pop("name")
        return cls(name, tuple(values.items()))


_NAME = re.compile(r"[A-Za-z0-9_+=,.@-]+")
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_run_name(name: str) -> str:
    """A run name: a relative path of plain components, written as it is normalised, that stays inside the
    root folder and does not look like a folder that ``--fresh`` set aside (``.old-``)."""
    parts = PurePosixPath(name).parts if name else ()
    if (
        not parts
        or str(PurePosixPath(name)) != name
        or name.startswith("/")
        or any(p in ("..", ".") or p.startswith(".") or ".old-" in p or not _NAME.fullmatch(p) for p in parts)
    ):
        raise ValueError(
            f"name must be a relative folder name inside --root (letters, digits and _+=,.@- , optionally "
            f"a/b), not starting with '.', without '..' or '.old-', got {name!r}"
        )
    return name


def check_device(name: str) -> str:
    """'auto', 'cpu', 'cuda', 'cuda:N' or 'mps' (whether this machine has it is checked when a run starts)."""
    if not _DEVICE.fullmatch(name):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    return name


def _check_type(name: str, annotation: str, value: Any) -> None:
    """ValueError naming the field unless ``value`` has its annotated type (ints are numbers, bools are not)."""
    optional = "None" in annotation
    if value is None and optional:
        return
    kind = annotation.split(" ")[0]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    valid = {
        "float": (number, "a number"),
        "int": (number and isinstance(value, int), "an integer"),
        "bool": (isinstance(value, bool), "true or false"),
        "str": (isinstance(value, str), "a string"),
    }[kind]
    if not valid[0]:
        raise ValueError(f"{name} must be {valid[1]}{' or None' if optional else ''}, got {value!r}")


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
    deform_amplitude: float = 1.0  # of the augmentation's random deformations (grayscale data sets)
    aug_transforms: str = "auto"
    # model
    model: str = "vgg5_stable"
    width: int = 64
    activation: str | None = None  # vgg5_stable and lipnet: "relu" or "maxmin" (None: the model's own)
    # "operator": every Conv2d / Linear weight divided by its operator norm in the forward pass; "orthogonal":
    # circular convolutions made orthogonal (Cayley), Linear layers divided by their norms (None: off)
    normalization: str | None = None
    # optimisation
    batch_size: int = 128
    test_batch_size: int = 512
    optimizer: str = "sgd"  # "sgd" (the original's) or "adam"
    lr: float = 0.05
    momentum: float = 0.9
    wd: float = 0.0
    sched_step: int = 40
    sched_gamma: float = 0.5
    num_epochs: int = 501
    eval_delta: int = 5
    # regularization: names, or RegSetting / {"name": ..., hyperparameter: value} entries
    regs: tuple[RegSetting, ...] = ()
    # Lipschitz-margin training: the radius eps_train to keep a certified margin for (0: off)
    lipschitz_margin: float = 0.0
    # "global": logits + sqrt(2) L eps off the label; "pairwise": + eps K[y, j] from the last layer's rows
    margin_rule: str = "global"
    # the cross-entropy on s * logits, divided by s (s > 1: for networks whose logits move little, L <= 1)
    ce_scale: float = 1.0
    # monitoring: the RKHS-norm bracket on a fixed probe batch; its lower bounds (an exhaustive search, the
    # costly part) at the first evaluation of every probe_delta epochs and at the last, its upper bound at all
    probe_size: int = 128
    probe_epsilon: float = 1.0
    probe_delta: int = 50

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "regs":
                _check_type(f.name, str(f.type), value)
            if str(f.type).startswith("float") and isinstance(value, int):
                object.__setattr__(self, f.name, float(value))  # 1 from YAML or JSON is 1.0
        # in the registry's order: 'a+b' and 'b+a' are one method
        regs = sorted((RegSetting.coerce(r) for r in self.regs), key=lambda r: regularizers.NAMES.index(r.name))
        object.__setattr__(self, "regs", tuple(regs))
        names = [r.name for r in regs]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"each regularizer can be selected once, got {', '.join(repeated)} twice")
        if sum(n in regularizers.ADVERSARIAL for n in names) > 1:
            raise ValueError("choose at most one adversarial training: pgd-l2 or pgd-linf")
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("model", self.model, tuple(MODELS))
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_run_name(self.name)
        check_device(self.device)
        if (self.width != 64 or self.activation is not None) and self.model not in WIDTH_MODELS:
            raise ValueError(
                f"width and activation apply to {' and '.join(WIDTH_MODELS)} only, got width={self.width}, "
                f"activation={self.activation} for {self.model}"
            )
        if self.activation is not None:
            check_choice("activation", self.activation, tuple(ACTIVATIONS))
        check_choice("margin_rule", self.margin_rule, MARGIN_RULES)
        if self.aug_transforms != "auto" and not self.aug:
            raise ValueError(f"aug_transforms={self.aug_transforms!r} chooses the transforms of an augmentation that "
                             "is off: add aug=true (--aug), or drop aug_transforms")  # fmt: skip
        if self.aug_transforms != "auto":
            parts = self.aug_transforms.split("+")
            if len(set(parts)) != len(parts) or not set(parts) <= set(AUG_TRANSFORMS):
                raise ValueError(
                    f"aug_transforms must be 'auto' or a '+'-joined choice of {', '.join(AUG_TRANSFORMS)} "
                    f"(each once, e.g. 'crop+deform'), got {self.aug_transforms!r}"
                )
        if self.normalization is not None:
            check_choice("normalization", self.normalization, NORMALIZATIONS)
            if "project-sn" in names:
                raise ValueError(
                    f"normalization={self.normalization!r} holds every layer's norm at 1 in the forward pass; "
                    "project-sn would rescale the raw weights to no effect: choose one of them"
                )
            if self.normalization == "orthogonal" and self.model != "lipnet":
                raise ValueError(
                    f"normalization='orthogonal' makes circular convolutions orthogonal; {self.model} pads with "
                    "zeros (and pools): use model='lipnet', or normalization='operator'"
                )
        positive = ("batch_size", "test_batch_size", "num_epochs", "eval_delta", "sched_step")
        for name in positive + ("width", "probe_size", "probe_delta"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("seed", "shuf_seed", "n_val"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("n_train", "n_test"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 or None (all examples), got {value!r}")
        for name in ("lr", "probe_epsilon", "sched_gamma", "ce_scale"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("momentum", "wd", "deform_amplitude", "lipschitz_margin"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    @property
    def reg_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regs)

    def reg(self, name: str) -> RegSetting | None:
        """The setting of regularizer ``name``, or None when it is not selected."""
        return next((r for r in self.regs if r.name == name), None)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def updated(self, changes: Mapping[str, Any], strict: bool = True) -> Config:
        """A copy with ``changes`` applied: fields (``regs`` first) and regularizer keys. A regularizer
        key that no selected regularizer takes is a ValueError when ``strict``, else ignored."""
        fields = {f.name for f in dataclasses.fields(Config)}
        config = self.replace(**{k: v for k, v in changes.items() if k in fields})
        settings = {r.name: dict(r.params) for r in config.regs}
        for key, value in changes.items():
            if key in fields:
                continue
            if not regularizers.is_param_key(key):
                raise ValueError(f"unknown key {key!r}; valid keys: the config fields {sorted(fields)} and the "
                                 f"regularizers' hyperparameters (see --help)")  # fmt: skip
            found = regularizers.targets(key, config.reg_names)
            if not found and strict:
                takers = sorted({r for r, _ in regularizers.targets(key, regularizers.NAMES)})
                raise ValueError(
                    f"{key} applies to {', '.join(takers)}; none of them is selected "
                    f"(selected: {', '.join(config.reg_names) or 'none'})"
                )
            for reg, param in found:
                settings[reg][param] = value
        regs = tuple(RegSetting(name, tuple(values.items())) for name, values in settings.items())
        return config.replace(regs=regs)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["regs"] = [r.to_dict() for r in self.regs]
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Config:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(known)}")
        return cls(**values)

    def flat(self) -> dict[str, Any]:
        """Every value by its key: the fields, ``regs`` as 'a+b', and 'reg.param' for each hyperparameter."""
        values: dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "regs"}
        values["regs"] = "+".join(self.reg_names) or "none"
        for reg in self.regs:
            values.update({f"{reg.name}.{k}": v for k, v in reg.params})
        return values


def conflicts(given: Sequence[tuple[str, str, Any]], selected: tuple[str, ...]) -> list[str]:
    """For each hyperparameter of the ``selected`` regularizers that two of the ``given`` (label, key,
    value) entries set to different values, a sentence naming both, e.g. "gradient-penalty.lmbda is given
    two values: --lmbda 0.1 and --gradient-penalty.lmbda 0.2"; [] when there is none."""
    setters: dict[tuple[str, str], list[tuple[str, Any]]] = {}
    for label, key, value in given:
        for target in regularizers.targets(key, selected):
            setters.setdefault(target, []).append((label, value))
    return [
        f"{reg}.{param} is given two values: {' and '.join(label for label, _ in pairs)}"
        for (reg, param), pairs in setters.items()
        if len({json.dumps(value, default=str) for _, value in pairs}) > 1
    ]


def identity(config: Config, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """What a run computes: its flat values without the execution fields (and the ``ignore`` ones);
    ``data_dir`` only as whether it names the embedded subset (a data set of its own): the folder that holds
    the full data set is where this machine keeps it, and the run's data hashes say what it read."""
    values = {k: v for k, v in config.flat().items() if k not in EXECUTION_FIELDS + ignore}
    if "data_dir" in values:
        values["data_dir"] = EMBEDDED if config.data_dir == EMBEDDED else None
    return values


def differences(saved: Config, now: Config, ignore: tuple[str, ...] = ()) -> list[str]:
    """'key: saved A, now B' for each identity key whose value differs."""
    a, b = identity(saved, ignore), identity(now, ignore)
    return [f"{k}: saved {a.get(k)!r}, now {b.get(k)!r}" for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]


def setting_key(config: Config) -> str:
    """A run's setting (its identity without the seeds) as a canonical JSON string: runs are seeds of
    one setting exactly when their keys are equal."""
    return json.dumps(identity(config, SEED_FIELDS), sort_keys=True)


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


LEGACY_REG_FIELDS = (
    "epsilon", "steps", "linf_step_size", "lmbda", "lmbdast", "lmbdatan", "tau", "kappa", "nb_it", "vat_xi",
    "vat_alpha", "lmbdasn", "delta_candidates", "stability_ex_per_batch", "stability_tr_per_ex",
    "stability_num_deformations",
)  # fmt: skip


def upgrade_legacy(values: Mapping[str, Any]) -> dict[str, Any]:
    """A config of the first format (one flat field per original flag, ``regs`` a list of names) in
    today's: each regularizer takes the values of the original flags it reads, the deformation penalties
    the augmentation's ``deform_amplitude``."""
    values = dict(values)
    legacy = {k: values.pop(k) for k in LEGACY_REG_FIELDS if k in values}
    regs = []
    for name in values.get("regs", []):
        if not isinstance(name, str):  # already a setting
            regs.append(name)
            continue
        entry = regularizers.lookup(name)
        params: dict[str, Any] = {}
        for p in entry.params:
            if p.alias in legacy:
                params[p.name] = legacy[p.alias]
            elif p.name == "amplitude" and "deform_amplitude" in values:
                params[p.name] = values["deform_amplitude"]
        regs.append({"name": name, **params})
    values["regs"] = regs
    return values


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


# one line of --help per Config field (but regs and experiment, which have their own flags)
FIELD_HELP: dict[str, str] = {
    "name": "run folder name under ROOT/EXPERIMENT",
    "root": "folder of the run folders",
    "device": "auto (CUDA when available), cpu, cuda or cuda:N",
    "seed": "seed of initialisation, batch order and augmentation",
    "dataset": f"one of: {', '.join(DATASETS)}",
    "data_dir": "folder of the data set's files, or 'embedded': the Fashion-MNIST subset shipped with kernel-reg "
    "(none: the standard place, Debian's dataset-fashion-mnist for Fashion-MNIST, ./data for CIFAR-10)",
    "n_train": "training examples drawn from the pool (none: all)",
    "n_val": "validation examples, the last of the shuffled pool (0: none)",
    "n_test": "test examples (none: all)",
    "shuf_seed": "which training subset: the pool is shuffled by RandomState(42 + shuf_seed)",
    "aug": "augmentation: crops and flips (CIFAR), random deformations (grayscale)",
    "deform_amplitude": "amplitude of the augmentation's random deformations",
    "aug_transforms": "the augmentation's transforms: auto (the data set's own, as --aug says) or a '+'-joined "
    "choice of crop (random crop of the image zero-padded by 1/8 of its height), flip (horizontal), deform "
    "(the random deformations of the stability penalties)",
    "model": f"one of: {', '.join(MODELS)}",
    "width": f"channels of the first layers ({' and '.join(WIDTH_MODELS)} only)",
    "activation": f"{' and '.join(WIDTH_MODELS)}: one of {', '.join(ACTIVATIONS)} (none: the model's own)",
    "normalization": "operator: each Conv2d / Linear weight divided by its operator norm, by persistent power "
    "iteration; orthogonal: each (circular) convolution orthogonal by the Cayley transform, Linear layers as "
    "operator (none: off)",
    "batch_size": "training batch size",
    "test_batch_size": "batch size of the accuracy passes",
    "optimizer": f"one of: {', '.join(OPTIMIZERS)} (Adam: --lr defaults to 0.001)",
    "lr": "learning rate",
    "momentum": "SGD momentum (Adam: not used)",
    "wd": "weight decay",
    "sched_step": "epochs between two learning-rate decays",
    "sched_gamma": "factor of each learning-rate decay",
    "num_epochs": "epochs to train (a resume may raise it)",
    "eval_delta": "epochs between two evaluations (accuracies, upper bound, checkpoint)",
    "lipschitz_margin": "eps_train of Lipschitz-margin training: logits + sqrt(2) L eps off the label (0: off)",
    "margin_rule": "the margin's constant: global (sqrt(2) L) or pairwise (min(sqrt(2) L, ||w_y - w_j|| L_body), "
    "the certificate kernel-reg evaluate uses; needs a model ending with a Linear layer)",
    "ce_scale": "s: the loss is CE(s logits, y) / s (s > 1 helps networks of small Lipschitz constant)",
    "probe_size": "training images of the probe batch of the RKHS-norm lower bounds",
    "probe_epsilon": "radius of the ||f||_delta lower bound on the probe",
    "probe_delta": "epochs between two computations of the RKHS-norm lower bounds (also at the last epoch)",
}


def field_types() -> dict[str, Callable[[str], Any]]:
    """Per Config field but ``regs``, the parser of its value from text (int, float, bool or str; 'none'
    for the fields that may be None)."""
    parsers: dict[str, Callable[[str], Any]] = {}
    for f in dataclasses.fields(Config):
        if f.name == "regs":
            continue
        text = str(f.type)
        parser: Callable[[str], Any] = str
        for name, kind in (("bool", parse_bool), ("int", int), ("float", float)):
            if text.startswith(name):
                parser = kind
                break
        parsers[f.name] = _optional(parser) if "None" in text else parser
    return parsers


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse_optional(text: str) -> Any:
        return None if text.lower() == "none" else parse(text)

    parse_optional.__name__ = parse.__name__
    return parse_optional


def parse_value(key: str, text: str) -> Any:
    """A value of ``key`` (a field or a regularizer key) from command-line or grid text."""
    types = field_types()
    if key in types:
        try:
            return types[key](text)
        except ValueError:
            raise ValueError(f"{key}: cannot read {text!r} as {types[key].__name__}") from None
    if regularizers.is_param_key(key):
        return regularizers.param_of(key).parse(text)
    raise ValueError(f"unknown key {key!r}; valid keys: the config fields {sorted(types)} and the regularizers' "
                     "hyperparameters (reg.name, or an original flag such as lmbda)")  # fmt: skip


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


ADAM_LR = 1e-3  # the learning rate Adam gets when none is given (the presets' 0.05 is SGD's)


def preset_config(experiment: str, **overrides: Any) -> Config:
    """The preset's defaults, then ``overrides``: fields and regularizer keys (``lmbda``,
    ``gradient-penalty.lmbda``), None values ignored as unset flags. ``optimizer="adam"`` without ``lr``
    takes ``ADAM_LR``, not the preset's SGD rate; ``momentum`` with Adam is refused (Adam has none)."""
    check_choice("experiment", experiment, tuple(PRESETS))
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("optimizer") == "adam":
        if "momentum" in given:
            raise ValueError("momentum applies to optimizer 'sgd' only (Adam keeps its own moment estimates); "
                             "drop it, or choose optimizer sgd")  # fmt: skip
        given.setdefault("lr", ADAM_LR)
    fields = {f.name for f in dataclasses.fields(Config)}
    base = Config(experiment=experiment, **{**PRESETS[experiment], **{k: v for k, v in given.items() if k in fields}})
    return base.updated({k: v for k, v in given.items() if k not in fields})


def hyperparameters(config: Config, include: Collection[tuple[str, str]] = ()) -> dict[str, Any]:
    """What sets the run's regularization: each regularizer's strength, its other hyperparameters where
    they differ from the registry's defaults or are in ``include`` ((regularizer, name) pairs), and weight
    decay when used, e.g. {'lmbda': 0.1, 'tau': 1.5}. A hyperparameter name that two selected
    regularizers share is qualified ('vat.epsilon')."""
    names = [p for r in config.regs for p, _ in r.params]
    values: dict[str, Any] = {}
    for reg in config.regs:
        for param in regularizers.REGISTRY[reg.name].params:
            value = reg[param.name]
            if param.strength or value != param.default or (reg.name, param.name) in include:
                key = param.name if names.count(param.name) == 1 else f"{reg.name}.{param.name}"
                values[key] = value
    if config.wd > 0:
        values["wd"] = config.wd
    return values


def format_value(value: Any) -> str:
    """A value as it appears in names and tables: exact (2.0 -> '2', 0.1 -> '0.1', 1e-05 -> '1e-05')."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return "none" if value is None else str(value)


def hyperparameter_text(config: Config) -> str:
    """``hyperparameters`` as 'lmbda=0.1, tau=1.5' ('' without any)."""
    return ", ".join(f"{k}={format_value(v)}" for k, v in hyperparameters(config).items())


def method_label(config: Config) -> str:
    """A short name of the regularization of a run, e.g. 'gradient-penalty+project-sn'."""
    labels = list(config.reg_names)
    if config.wd > 0:
        labels.append("wd")
    return "+".join(labels) or "none"
