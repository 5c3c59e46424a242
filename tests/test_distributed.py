"""Two processes (gloo, CPU) against one: for every regularizer, one DDP step on a batch split in two
equals one single-process step on the whole batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from kernel_reg.app.config import preset_config
from kernel_reg.app.regularizers import NAMES as REGULARIZERS
from kernel_reg.app.training import build_regularizers, step
from kernel_reg.distributed import SINGLE, Group

WORLD = 2


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)
    ).double()  # fmt: skip


def batch():
    generator = torch.Generator().manual_seed(3)
    return torch.rand(16, 1, 8, 8, generator=generator, dtype=torch.float64), torch.randint(
        0, 5, (16,), generator=generator
    )


def one_step(reg: str, group: Group) -> dict[str, torch.Tensor]:
    """One SGD step with ``reg`` on this process's shard of the batch; the new parameters."""
    cheap = dict(epsilon=0.3, steps=2, tau=0.5, lmbda=0.5, deformations=2, lmbdasn=0.5)
    config = preset_config("fmnist1000_vgg5", regs=(reg,)).updated(cheap, strict=False)
    model = tiny_model()
    trained = DistributedDataParallel(model) if group.world > 1 else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    regs = build_regularizers(config, group)
    x, y = batch()
    shard = group.shard(len(x))
    x, y = x[shard], y[shard]
    torch.manual_seed(1)  # one RNG stream, alike on every rank and in the single process
    for _ in range(2):  # two steps: momentum and persistent power-iteration vectors are exercised too
        step(model, x, y, regs, optimizer, epoch=100, trained=trained, group=group)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, values in regs.state_dict().items():  # the persistent power-iteration vectors
        state.update({f"{name}:{k}": v.clone() for k, v in values.items()})
    return state


def worker(rank: int, port: int, out: str) -> None:
    # The rank's C++ stderr (a gloo abort says why only there) goes to a file the fixture can show.
    log = os.open(os.path.join(out, f"rank{rank}.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 2)
    store = dist.TCPStore("127.0.0.1", port)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    results = {reg: one_step(reg, Group(rank, WORLD)) for reg in REGULARIZERS}
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    dist.barrier()  # no rank tears its connections down while the other still reads from them
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    """Both ranks' steps. The store is served from this process on loopback and gloo is bound to it,
    so nothing depends on the machine's hostname or on file locks; a rank killed by a signal is
    reported with its stderr."""
    folder = tmp_path_factory.mktemp("ddp")
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    loopback = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    with pytest.MonkeyPatch.context() as env:
        if loopback:
            env.setenv("GLOO_SOCKET_IFNAME", loopback[0])
        try:
            mp.spawn(worker, args=(store.port, str(folder)), nprocs=WORLD, join=True)
        except mp.ProcessExitedException as error:
            logs = "\n".join(f"rank {r}: " + (folder / f"rank{r}.log").read_text()[-2000:] for r in range(WORLD))
            pytest.fail(f"{error}\n{logs}")
    return [torch.load(folder / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("reg", REGULARIZERS)
def test_two_processes_take_the_single_process_step(distributed_results, reg):
    single = one_step(reg, SINGLE)
    before = tiny_model().state_dict()
    for rank_results in distributed_results:
        for name, value in single.items():
            torch.testing.assert_close(rank_results[reg][name], value, rtol=1e-5, atol=1e-8)
    assert any(not torch.equal(single[k], before[k]) for k in before)  # the step did something


def test_group_shards_and_noise():
    groups = [Group(r, 3) for r in range(3)]
    assert [g.shard(10) for g in groups] == [slice(0, 3), slice(3, 6), slice(6, 9)]
    draws = []
    for g in groups:
        torch.manual_seed(0)
        draws.append(g.draw(lambda count: torch.randn(count, 2), 3))
    torch.manual_seed(0)
    torch.testing.assert_close(torch.cat(draws), torch.randn(9, 2))
    with pytest.raises(ValueError, match="rank must be in"):
        Group(3, 3)


def test_torchrun_training_matches_one_process(tmp_path):
    """`kernel-reg train --nproc 2` (torchrun, DDP, rank 0 writes) logs what one process logs, and resumes."""
    import subprocess
    import sys

    from kernel_reg.app.rundir import read_metrics

    flags = [
        "--data-dir", "embedded", "--n-train", "128", "--n-val", "64", "--n-test", "64", "--width", "4",
        "--batch-size", "32", "--eval-delta", "1", "--probe-size", "16", "--reg", "gradient-penalty",
        "--reg", "project-sn", "--tau", "1.0", "--lr", "0.2", "--name", "r",
    ]  # fmt: skip
    command = [sys.executable, "-m", "kernel_reg", "train", *flags]
    for root, extra in (("one", []), ("two", ["--nproc", "2"])):
        subprocess.run(command + ["--root", str(tmp_path / root), "--num-epochs", "2", *extra], check=True)
    subprocess.run(command + ["--root", str(tmp_path / "two"), "--num-epochs", "3", "--nproc", "2"], check=True)
    subprocess.run(command + ["--root", str(tmp_path / "one"), "--num-epochs", "3"], check=True)
    one = read_metrics(tmp_path / "one" / "fmnist1000_vgg5" / "r")
    two = read_metrics(tmp_path / "two" / "fmnist1000_vgg5" / "r")
    assert [m.epoch for m in two] == [0, 1, 2]
    for a, b in zip(one, two):
        for key, value in a.to_dict().items():
            if key not in ("seconds_per_epoch", "eval_seconds", "bracket_seconds"):
                assert getattr(b, key) == pytest.approx(value, rel=1e-4, abs=1e-6), key
