"""Command line: ``kernel-reg train | sweep | evaluate | certify | export | report | models | verify | demo``.

Every field of ``Config`` is a flag, in kebab case (``--data-dir``) and, as in the original scripts, in
snake case (``--data_dir``); regularizers are chosen with ``--reg NAME`` or the original's ``--reg_NAME``
flags, so ``python main.py ARGS`` of the original becomes ``kernel-reg train ARGS``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..progress import say
from . import regularizers, suite
from .builders import resolve_device
from .config import FIELD_HELP, PRESETS, Config, conflicts, field_types, format_value, parse_bool, preset_config
from .data import EMBEDDED
from .environment import package_version
from .evaluation import certify_run, evaluate_run
from .extras import MissingExtra
from .report import write_report
from .rundir import (
    SPLITS,
    DiskFullError,
    check_not_nested,
    check_writable,
    export_weights,
    locked,
    read_config,
    read_metrics,
    run_path,
    unfinished_epochs,
)
from .signals import Interrupted, forwarded

# fields with their own flags below
_SPECIAL = {"experiment", "regs"}
_PARAM = "param:"  # argparse dest prefix of the regularizer hyperparameter flags
_THREADS_SET = "KERNEL_REG_THREADS_SET"  # marks a process that `reproduce` started on its thread count


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--experiment", default="fmnist1000_vgg5", choices=sorted(PRESETS), metavar="NAME",
        help=f"preset whose defaults the other flags override; one of: {', '.join(sorted(PRESETS))}",
    )  # fmt: skip
    parser.add_argument(
        "--reg", dest="regs", action="append", choices=(*regularizers.NAMES, "none"), default=None, metavar="NAME",
        help=f"add a regularizer (repeatable): {', '.join(regularizers.NAMES)}; none: no regularizer",
    )  # fmt: skip
    for reg in regularizers.REGISTRY.values():
        parser.add_argument(reg.original_flag, dest="regs", action="append_const", const=reg.name,
                            help=f"same as --reg {reg.name}")  # fmt: skip
    group = parser.add_argument_group("configuration (defaults from the preset)")
    for name, parse in field_types().items():
        if name in _SPECIAL:
            continue
        names = [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])
        if parse is parse_bool:
            group.add_argument(*names, dest=name, action=argparse.BooleanOptionalAction, default=None,
                               help=FIELD_HELP[name])  # fmt: skip
        else:
            group.add_argument(*names, dest=name, type=parse, default=None, metavar=parse.__name__.upper(),
                               help=FIELD_HELP[name])  # fmt: skip
    hyper = parser.add_argument_group(
        "regularizer hyperparameters (--REG.NAME sets one regularizer's; registry defaults otherwise)"
    )
    for reg in regularizers.REGISTRY.values():
        for param in reg.params:
            key = f"{reg.name}.{param.name}"
            default = f"default {param.default}" + (f", not the library's: {param.differs}" if param.differs else "")
            hyper.add_argument(f"--{key}", dest=_PARAM + key, type=_typed(param.parse), default=None, metavar="V",
                               help=f"{param.help} ({default})")  # fmt: skip
    original = parser.add_argument_group("the original's shared flags: each sets its hyperparameter in every selected "
                                         "regularizer that reads it")  # fmt: skip
    for alias, pairs in regularizers.ALIASES.items():
        names = [f"--{alias.replace('_', '-')}"] + ([f"--{alias}"] if "_" in alias else [])
        param = regularizers.param_of(alias)
        original.add_argument(*names, dest=_PARAM + alias, type=_typed(param.parse), default=None, metavar="V",
                              help="sets " + ", ".join(f"{r}.{p}" for r, p in pairs))  # fmt: skip


def _typed(parse: Callable[[str], object]) -> Callable[[str], object]:
    """``parse`` with its ValueError shown by argparse as it is."""

    def typed(text: str) -> object:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return typed


def reg_param_values(args: argparse.Namespace) -> dict[str, object]:
    """The regularizer hyperparameters given on the command line, by key (alias or reg.param)."""
    return {k[len(_PARAM) :]: v for k, v in vars(args).items() if k.startswith(_PARAM) and v is not None}


def config_from_args(args: argparse.Namespace) -> Config:
    """The preset of ``--experiment`` with every flag that was given; a hyperparameter flag that no
    selected regularizer takes is an error."""
    overrides: dict[str, object] = {
        f.name: getattr(args, f.name, None) for f in dataclasses.fields(Config) if f.name not in _SPECIAL
    }
    if args.regs:
        regs = tuple(dict.fromkeys(args.regs))
        if "none" in regs and len(regs) > 1:
            others = ", ".join(r for r in regs if r != "none")
            raise ValueError(f"--reg none means no regularizer: give it alone, not with {others}")
        overrides["regs"] = tuple(r for r in regs if r != "none")
    config = preset_config(args.experiment, **overrides)
    values = dict(sorted(reg_param_values(args).items(), key=lambda item: "." in item[0]))  # shared flags first
    clashes = conflicts([(f"--{k} {format_value(v)}", k, v) for k, v in values.items()], config.reg_names)
    if clashes:
        raise ValueError("; ".join(clashes) + "; give one value")
    return config.updated(values)


def train_command(config: Config) -> str:
    """The ``kernel-reg train`` command that trains ``config`` (into ``runs/``, on the default device): its
    preset, name, regularizers and every value that differs from the preset's or the registry's; the data
    folder only when it is the embedded subset (where this machine keeps the full data set is its own)."""
    preset = preset_config(config.experiment)
    words = ["kernel-reg", "train", "--experiment", config.experiment, "--name", config.name]
    for reg in config.regs:
        words += ["--reg", reg.name]
    for f in dataclasses.fields(Config):
        value = getattr(config, f.name)
        if f.name in (*_SPECIAL, "name", "root", "device", "data_dir") or value == getattr(preset, f.name):
            continue
        flag = f"--{f.name.replace('_', '-')}"
        words += [flag if value else f"--no-{flag[2:]}"] if isinstance(value, bool) else [flag, format_value(value)]
    if config.data_dir == EMBEDDED:
        words += ["--data-dir", EMBEDDED]
    for reg in config.regs:
        defaults = {p.name: p.default for p in regularizers.REGISTRY[reg.name].params}
        words += [w for k, v in reg.params if v != defaults[k] for w in (f"--{reg.name}.{k}", format_value(v))]
    return shlex.join(words)


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", "--data_dir", default=None,
                        help="where this machine keeps the run's data set (default: its own setting)")  # fmt: skip
    parser.add_argument("--allow-other-data", "--allow_other_data", action="store_true",
                        help="go on when the data differ from the run record (recorded with the result)")  # fmt: skip


def _add_output_flags(parser: argparse.ArgumentParser, record: str) -> None:
    parser.add_argument("--out", type=Path, default=None,
                        help=f"write {record} into OUT/<run folder name> (default: into the run folder)")  # fmt: skip
    parser.add_argument("--in-place", "--in_place", action="store_true",
                        help=f"overwrite the {record} of a published run folder (one with weights.pt)")  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """Bad input: one line naming the problem (and the valid choices), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kernel-reg", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"kernel-reg {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a (regularized) network; resumes an existing run folder")
    _add_config_flags(train)
    train.add_argument("--fresh", action="store_true", help="set an existing run folder aside and start over")
    train.add_argument("--nproc", type=int, default=1, help="processes (GPUs) to train on, launched with torchrun")
    train.add_argument("--allow-other-data", "--allow_other_data", action="store_true",
                       help="resume although the data differ from the run's record (recorded)")  # fmt: skip

    sweep = commands.add_parser("sweep", help="a grid of runs with submitit (local processes or Slurm)")
    _add_config_flags(sweep)
    sweep.add_argument("--grid", action="append", default=[], help="'key=v1,v2 key2=w' (repeatable: a union)")
    sweep.add_argument("--grid-file", "--grid_file", type=Path, help="JSON or YAML: a list of grids")
    sweep.add_argument("--seeds", default="1", help="training-subset seeds (shuf_seed): N for 0..N-1, A-B for A..B")
    sweep.add_argument("--init-seed-per-subset", "--init_seed_per_subset", action="store_true",
                       help="subset s initialises with seed --seed + s (seeds vary initialisation too)")  # fmt: skip
    sweep.add_argument("--jobs", type=int, default=2, help="runs at once (Slurm: the array's parallelism)")
    sweep.add_argument("--cluster", choices=("local", "slurm", "debug"), default="local")
    sweep.add_argument("--partition", default=None)
    sweep.add_argument("--time", type=int, default=240, help="minutes per run (Slurm)")
    sweep.add_argument("--gpus-per-node", "--gpus_per_node", type=int, default=0)
    sweep.add_argument("--cpus-per-task", "--cpus_per_task", type=int, default=2)
    sweep.add_argument("--mem-gb", "--mem_gb", type=int, default=None)
    sweep.add_argument("--evaluate", action="store_true", help="evaluate each run after training")
    sweep.add_argument("--dry-run", "--dry_run", action="store_true", help="list the runs and stop")
    suite.add_flags(sweep)

    evaluate = commands.add_parser("evaluate", help="robustness of trained runs -> robustness.json")
    evaluate.add_argument("runs", nargs="*", type=Path, help="run folders (default: --root/--experiment/--name)")
    evaluate.add_argument("--experiment", default=None, choices=sorted(PRESETS), metavar="NAME")
    evaluate.add_argument("--name", default="tmp")
    evaluate.add_argument("--root", default="runs")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--weights", choices=("best", "last"), default="best",
                          help="the weights of best validation accuracy (default) or the last ones")  # fmt: skip
    _add_data_flags(evaluate)
    _add_output_flags(evaluate, "robustness.json")
    suite.add_flags(evaluate)

    certify = commands.add_parser("certify", help="clean and certified l2 accuracy, no attacks -> certified.json")
    certify.add_argument("runs", nargs="+", type=Path, help="run folders")
    certify.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.25, 0.5], help="l2 radii")
    certify.add_argument("--n-test", "--n_test", type=int, default=0, help="the first N images of the split (0: all)")
    certify.add_argument("--split", choices=SPLITS, default="test",
                         help="test images (default) -> certified.json, or the run's validation examples (carved "
                              "from the training pool: choose a recipe on them) -> certified_val.json")  # fmt: skip
    certify.add_argument("--device", default="auto")
    certify.add_argument("--weights", choices=("best", "last"), default="best",
                         help="the weights of best validation accuracy (default) or the last ones")  # fmt: skip
    _add_data_flags(certify)
    _add_output_flags(certify, "certified.json")

    export = commands.add_parser("export", help="weights.pt: a run's weights without optimizer state, to publish")
    export.add_argument("runs", nargs="+", type=Path, help="run folders")

    report = commands.add_parser("report", help="Markdown table and plots over a folder of runs")
    report.add_argument("root", nargs="?", type=Path, default=Path("runs"))
    report.add_argument("--out", type=Path, default=None, help="folder for report.md and the plots (default: root)")

    models = commands.add_parser("models", help="the published models of the model index (results/models.json)")
    models.add_argument("--index", type=Path, default=None, help="the index (default: results/models.json)")
    models.add_argument("--update", action="store_true",
                        help="regenerate the index from the run folders beside it (after publishing)")  # fmt: skip

    verify = commands.add_parser("verify", help="measure a published model's recorded numbers again")
    verify.add_argument("model", help="its name in `kernel-reg models`, or its folder")
    verify.add_argument("--n-test", "--n_test", type=int, default=0,
                        help="the first N test images of each record (0: all of its images)")  # fmt: skip
    verify.add_argument("--index", type=Path, default=None, help="the index (default: results/models.json)")
    verify.add_argument("--device", default="cpu")
    _add_data_flags(verify)

    reproduce = commands.add_parser("reproduce", help="retrain a published run and compare with its metrics")
    reproduce.add_argument("run", type=Path, help="the published run folder")
    reproduce.add_argument("--root", type=Path, default=Path("runs/reproduce"), help="where to retrain it")
    reproduce.add_argument("--threads", type=int, default=1,
                           help="CPU threads (published runs: 1; sums differ across counts)")  # fmt: skip

    demo = commands.add_parser("demo", help="the main job: four methods on 1000 embedded Fashion-MNIST images")
    demo.add_argument("--root", type=Path, default=Path("runs/demo"))
    demo.add_argument("--epochs", type=int, default=40)
    demo.add_argument("--device", default="auto")
    return parser


def _set_aside(config: Config) -> None:
    """Rename an existing run folder to ``<name>.old-<time>`` (which reports ignore), holding its lock."""
    run_dir = run_path(config)
    if run_dir.exists():
        check_not_nested(run_dir, Path(config.root) / config.experiment)
        with locked(run_dir, "kernel-reg train --fresh", remedy="choose another --name"):
            stamp = time.strftime("%Y%m%d-%H%M%S")
            target = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
            count = 1
            while target.exists():
                count += 1
                target = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{count}")
            run_dir.rename(target)
        say(f"set the old run aside as {target}")


def demo_configs(root: Path, epochs: int, device: str) -> list[Config]:
    """Baseline, a lower-bound penalty, adversarial training and a penalty with the projection."""
    base = preset_config(
        "fmnist1000_vgg5", data_dir="embedded", n_val=2000, root=str(root), num_epochs=epochs,
        eval_delta=max(1, epochs // 10), width=16, sched_step=max(1, epochs // 2), device=device, probe_size=64,
        probe_delta=max(1, epochs // 5),
    )  # fmt: skip
    return [
        base.replace(name="baseline"),
        base.replace(name="grad_penalty").updated({"regs": ("gradient-penalty",), "lmbda": 0.05}),
        base.replace(name="pgd_l2").updated({"regs": ("pgd-l2",), "epsilon": 1.0, "steps": 3}),
        base.replace(name="gradl2_project").updated({"regs": ("loss-gradl2", "project-sn"), "lmbda": 0.1, "tau": 3.0}),
    ]


def run_demo(args: argparse.Namespace) -> None:
    from .training import train

    began = time.perf_counter()
    settings = suite.EvalSettings(
        l2_eps=(0.5, 1.0, 1.5), linf_eps=(2 / 255, 8 / 255), steps=20, l2_step_size=0.25, n_test=300, queries=300
    )
    check_writable(args.root, "the demo writes its runs and report there; choose another --root")
    spent = {"training": 0.0, "evaluation": 0.0}
    for config in demo_configs(args.root, args.epochs, args.device):
        say(f"== training {config.name}: {', '.join(config.reg_names) or 'no regularization'}")
        started = time.perf_counter()
        train(config, log=say)
        trained = time.perf_counter()
        evaluate_run(run_path(config), settings, args.device, log=say)
        spent["training"] += trained - started
        spent["evaluation"] += time.perf_counter() - trained
    table, files = write_report(args.root)
    say(table)
    say("wrote " + ", ".join(str(f) for f in files))
    split = ", ".join(f"{part} {seconds:.0f} s" for part, seconds in spent.items())
    say(f"demo finished in {time.perf_counter() - began:.0f} s ({split})")


def run_sweep_command(args: argparse.Namespace) -> int:
    from .sweep import Cluster, expand, failures, load_grid_file, parse_grid, parse_seeds, run_sweep

    if args.shuf_seed is not None:
        raise ValueError("a sweep sets shuf_seed from --seeds N (0..N-1); drop --shuf-seed")
    grids = [parse_grid(text) for text in args.grid]
    if args.grid_file is not None:
        grids += load_grid_file(args.grid_file)
    if not grids:
        raise ValueError("give the runs with --grid 'key=v1,v2 ...' or --grid-file FILE")
    base = config_from_args(argparse.Namespace(**{k: v for k, v in vars(args).items() if not k.startswith(_PARAM)}))
    seeds = parse_seeds(args.seeds)
    configs = expand(base, grids, seeds, defaults=reg_param_values(args), init_per_subset=args.init_seed_per_subset)
    checked = suite.from_args(args)  # before anything is listed or written
    given = suite.flags_set(checked)
    if given and not args.evaluate:
        raise ValueError(f"{', '.join(given)} set the evaluation, which runs only with --evaluate: add it, or "
                         "drop them")  # fmt: skip
    settings = checked if args.evaluate else None
    if args.dry_run:
        for config in configs:
            say(str(run_path(config)))
        return 0
    if args.cluster != "slurm":
        resolve_device(base.device)  # here, before any job starts
    check_writable(Path(base.root), "the sweep writes its runs there; choose another --root")
    cluster = Cluster(
        args.cluster, args.jobs, args.partition, args.time, args.gpus_per_node, args.cpus_per_task, args.mem_gb
    )
    outcomes = run_sweep(configs, cluster, settings, log=say)
    if cluster.kind == "slurm":
        return 0  # submitted; the jobs report in their logs
    failed = failures(outcomes)
    if failed:
        say(f"{len(failed)} of {len(outcomes)} runs failed:")
        for name, error in failed:
            say(f"  {name}: {error}")
        return 1
    return 0


def _launch_with_torchrun(argv: Sequence[str], nproc: int) -> int:
    """Run this same command under torchrun on ``nproc`` processes (``--nproc`` removed). One machine, so the
    rendezvous stays on loopback: a hostname that does not resolve (containers, sandboxes) cannot hang it."""
    rest, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            rest.append(item)
    launcher = ["torch.distributed.run", "--standalone", "--local_addr=127.0.0.1", f"--nproc_per_node={nproc}"]
    child = subprocess.Popen([sys.executable, "-m", *launcher, "-m", "kernel_reg", *rest])
    with forwarded(child.send_signal) as received:
        code = child.wait()
    if received:
        name = signal.Signals(received[0]).name
        raise Interrupted(
            f"stopped: {name} was passed to torchrun and its {nproc} training processes, which have ended; the last "
            "checkpoint is kept; rerun the same command to resume",
            received[0],
        )
    return code


def _zoo_command(args: argparse.Namespace) -> int:
    from . import zoo

    if args.command == "models":
        if args.update:
            results = (args.index or zoo.default_index()).parent
            say(f"wrote {zoo.write_index(results, train_command)}")
        for line in zoo.table(zoo.read_index(args.index)):
            say(line)
        return 0
    if args.n_test < 0:
        raise ValueError(f"--n-test must be an integer >= 1 (the first N test images), or 0 for all, got {args.n_test}")
    comparisons = zoo.verify(args.model, args.n_test or None, args.index, args.device, args.data_dir,
                             args.allow_other_data, log=say)  # fmt: skip
    differ = [c for c in comparisons if not c.agrees]
    if differ:
        print(f"kernel-reg verify: {len(differ)} of {len(comparisons)} numbers differ from the record: "
              + "; ".join(c.what for c in differ), file=sys.stderr)  # fmt: skip
        return 1
    say(f"all {len(comparisons)} recorded numbers of {args.model} agree")
    return 0


def _reproduce_command(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import torch

    from .reproduction import COMPARED, reproduce

    if args.threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {args.threads}")
    if torch.get_num_threads() != args.threads:
        if os.environ.get(_THREADS_SET) is not None:
            raise ValueError(f"torch runs {torch.get_num_threads()} threads although OMP_NUM_THREADS={args.threads}")
        # a fresh process started on that many threads: torch.set_num_threads breaks some builds' solves
        count = str(args.threads)
        env = {**os.environ, "OMP_NUM_THREADS": count, "MKL_NUM_THREADS": count, _THREADS_SET: count}
        return subprocess.call([sys.executable, "-m", "kernel_reg", *argv], env=env)
    result = reproduce(args.run, args.root, log=say)
    recorded, now = result.test_acc
    say(f"{result.identical} of {result.evaluations} evaluations bit-identical; last test accuracy recorded "
        f"{100 * recorded:.2f}%, retrained {100 * now:.2f}%")  # fmt: skip
    if result.exact:
        return 0
    largest = ", ".join(f"{name} {result.largest[name]:.3g}" for name in COMPARED)
    why = "" if result.machines is None else f"; {result.machines}"
    print(f"kernel-reg reproduce: the retrained run differs from the record (largest differences: {largest}){why}",
          file=sys.stderr)  # fmt: skip
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            from .training import TrainingDiverged, train

            config = config_from_args(args)
            if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
                return _launch_with_torchrun(argv, args.nproc)
            if args.fresh:
                _set_aside(config)
            try:
                train(config, log=say, allow_other_data=args.allow_other_data)
            except TrainingDiverged as error:
                print(f"kernel-reg: training diverged: {error}", file=sys.stderr)
                return 1
        elif args.command == "sweep":
            return run_sweep_command(args)
        elif args.command == "evaluate":
            settings = suite.from_args(args)
            runs = args.runs or [Path(args.root) / (args.experiment or "fmnist1000_vgg5") / args.name]
            for run_dir in runs:
                say(f"{run_dir}:")
                out = None if args.out is None else args.out / run_dir.resolve().name
                evaluate_run(run_dir, settings, args.device, args.weights, say, args.data_dir, out, args.in_place,
                             args.allow_other_data)  # fmt: skip
        elif args.command == "certify":
            if args.n_test < 0:
                raise ValueError(
                    f"--n-test must be an integer >= 1, or 0 for all the split's images, got {args.n_test}"
                )
            for run_dir in args.runs:
                say(f"{run_dir}:")
                out = None if args.out is None else args.out / run_dir.resolve().name
                certify_run(run_dir, args.eps, args.n_test or None, args.device, args.weights, say, args.data_dir, out,
                            args.in_place, args.allow_other_data, args.split)  # fmt: skip
        elif args.command in ("models", "verify"):
            return _zoo_command(args)
        elif args.command == "reproduce":
            return _reproduce_command(args, argv)
        elif args.command == "export":
            for run_dir in args.runs:
                path = export_weights(run_dir)
                unfinished = unfinished_epochs(read_config(run_dir), read_metrics(run_dir)[-1].epoch)
                say(f"wrote {path}" + (f" (unfinished: {unfinished}, as the file records)" if unfinished else ""))
        elif args.command == "report":
            table, files = write_report(args.root, args.out, warn=lambda line: print(line, file=sys.stderr))
            say(table)
            say("wrote " + ", ".join(str(f) for f in files))
        elif args.command == "demo":
            run_demo(args)
    except Interrupted as error:
        print(f"kernel-reg {args.command}: {error}", file=sys.stderr)
        return error.exit_code
    except DiskFullError as error:
        print(f"kernel-reg {args.command}: error: {error.strerror}", file=sys.stderr)
        return 1
    except MissingExtra as error:
        parser.exit(2, f"kernel-reg {args.command}: error: {error}\n")
    except KeyboardInterrupt:
        print(f"kernel-reg {args.command}: interrupted; every record is written whole or not at all, so what was on "
              "disk before is intact; rerun the same command to go on", file=sys.stderr)  # fmt: skip
        return 130
    except (ValueError, OSError) as error:  # RunFolderError, DataNotFoundError and DataFileError among them
        parser.exit(2, f"kernel-reg {args.command}: error: {error}\n")
    return 0
