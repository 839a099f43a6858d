"""torch.distributed (gloo, 2 CPU processes): cross-rank Shuffle BN, gathered keys, sharded
features, and torchrun end to end."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny_config

from mocolab import distributed as du
from mocolab.checkpoint import safe_load
from mocolab.data import TensorData
from mocolab.eval.features import extract_features
from mocolab.methods import build_method
from mocolab.step import train_step

pytestmark = pytest.mark.dist

B, STEPS = 8, 4  # per-rank batch; steps compared


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _two_rank_checks(rank, world, port, out):
    """Every 2-rank check of the suite in one gloo group (a spawned process spends seconds
    importing torch): each part seeds what it draws and writes its own files."""
    from test_mocov3 import two_rank_part

    _init(rank, world, port)
    for method in METHODS:
        _equivalence_part(rank, world, out, method)
    _bn_groups_part(rank, out)
    _shuffle_part(rank, out)
    two_rank_part(rank, out)
    dist.destroy_process_group()


def spawn_two_rank_checks(out: Path) -> Path:
    """Runs _two_rank_checks on 2 spawned processes; conftest's session fixture `two_ranks`."""
    mp.start_processes(_two_rank_checks, args=(2, _port(), str(out)), nprocs=2, start_method="spawn")
    return out


def _inputs(step):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(2 * B, 3, 16, 16, generator=g), torch.randn(2 * B, 3, 16, 16, generator=g)


def _train(cfg, rank=0, world=1):
    """STEPS steps of the config's method on fixed views; rank r takes rows [r*n, (r+1)*n) of
    each global batch (and their dataset indices, for the bank)."""
    torch.manual_seed(0)
    model = build_method(cfg, n_train=STEPS * 2 * B)
    net = du.ddp(model) if world > 1 else model
    opt = torch.optim.SGD(model.learnable_params(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    g, n, losses = torch.Generator().manual_seed(7), 2 * B // world, []
    for step in range(STEPS):
        x_q, x_k = (x[rank * n:(rank + 1) * n] for x in _inputs(step))
        views = (x_q,) if model.num_views == 1 else (x_q, x_k)
        index = step * 2 * B + rank * n + torch.arange(n)
        loss = train_step(model, opt, views, m=0.9, index=index, generator=g, net=net)[0]
        losses.append(du.all_reduce(loss.clone(), "mean").item())  # the global batch's loss
    return model, losses


def _state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _equivalence_part(rank, world, out, method):
    # bn_splits counts the global batch's BN groups: 2 on 2 ranks is one group per rank
    model, losses = _train(tiny_config(**{"model.bn_splits": 2, "moco.queue_size": 40, "moco.method": method}),
                           rank, world)
    torch.save({"losses": losses, "state": _state(model)}, f"{out}/{method}_rank{rank}.pt")


METHODS = ["moco", "e2e", "bank", "mocov3"]


@pytest.mark.parametrize("method", METHODS)
def test_two_ranks_equal_one_process_with_the_same_bn_splits(two_ranks, method):
    """2 ranks x batch B with cross-rank Shuffle BN == 1 process x batch 2B, both with bn_splits=2:
    same losses, same state (queue with keys gathered in rank order; one global bank), same
    weights. Without the cross-rank shuffle the keys' BN groups would differ; without the
    gathers the queue, the bank or end-to-end's negatives would."""
    r0, r1 = (torch.load(two_ranks / f"{method}_rank{r}.pt", weights_only=True) for r in (0, 1))
    for name in r0["state"]:  # queue, pointer, bank and f_k identical on both ranks
        if name.startswith(("queue.", "bank.", "encoder_k.")) and "running" not in name:
            assert torch.equal(r0["state"][name], r1["state"][name]), name

    model, losses = _train(tiny_config(**{"model.bn_splits": 2, "moco.queue_size": 40, "moco.method": method}))
    assert losses == pytest.approx(r0["losses"], rel=1e-5, abs=1e-6)
    if method == "moco":
        assert int(model.queue.ptr) == int(r0["state"]["queue.ptr"]) == (STEPS * 2 * B) % 40
        torch.testing.assert_close(model.queue.keys, r0["state"]["queue.keys"], rtol=1e-4, atol=1e-5)
    if method == "bank":
        torch.testing.assert_close(model.bank.features, r0["state"]["bank.features"], rtol=1e-4, atol=1e-5)
    # the losses above (every step, to 1e-5) are the precise check. The weights carry one more
    # update, whose gradient sums in another order (2 x B against 2B; more so with one thread):
    # measured up to 6e-4 (bank) and 1.8e-3 (mocov3) at lr 0.5, 2e-6 for MoCo
    tol = {"rtol": 1e-4, "atol": 5e-3}
    for name, v in model.state_dict().items():
        if name.startswith("encoder_") and "running" not in name and "num_batches" not in name:  # BN stats: per rank
            torch.testing.assert_close(v, r0["state"][name], **tol, msg=name)


def _split_modules(model):
    from mocolab.models.splitbn import SplitBatchNorm

    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d)
            and not isinstance(m, torch.nn.SyncBatchNorm)], SplitBatchNorm


def _bn_forward(cfg, x):
    """The query encoder's output (train mode: BN with batch statistics) and its BN buffers."""
    torch.manual_seed(0)
    model = build_method(cfg)
    model.train()
    with torch.no_grad():
        y = model.encoder_q(x)
    bufs = {k: v.clone() for k, v in model.encoder_q.state_dict().items() if "running" in k}
    return model, y, bufs


def _bn_groups_part(rank, out):
    from mocolab.config import ConfigError, check_bn_groups

    cfg = tiny_config(**{"model.bn_splits": 4, "optim.batch_size": 16})  # the preset: groups of 4 images
    x = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(5))[rank * 8:(rank + 1) * 8]
    model, y, bufs = _bn_forward(cfg, x)  # this rank's 8 images
    bns, split_bn = _split_modules(model)
    splits = sorted({m.splits if isinstance(m, split_bn) else 1 for m in bns})
    errors = []
    for bn_splits, batch in ((3, 12), (1, 2)):  # 3 groups over 2 ranks; 1 image per rank
        try:
            check_bn_groups(bn_splits, batch, du.world_size())
        except ConfigError as e:
            errors.append(str(e))
    torch.save({"y": y, "bufs": bufs, "splits": splits, "groups": check_bn_groups(4, 16, du.world_size()),
                "errors": errors}, f"{out}/bn{rank}.pt")


def test_bn_splits_counts_the_global_batch_groups(two_ranks):
    """model.bn_splits=4 with a global batch of 16: on 2 ranks each rank normalises its 8 images in
    2 groups of 4, as 1 process normalises 16 images in 4 groups of 4 (the same outputs)."""
    r = [torch.load(two_ranks / f"bn{i}.pt", weights_only=True) for i in (0, 1)]
    assert r[0]["splits"] == r[1]["splits"] == [2] and r[0]["groups"] == (2, 4)
    assert "must be divisible by the number of processes (2)" in r[0]["errors"][0]
    assert "BN groups of 1 image" in r[0]["errors"][1] and len(r[0]["errors"]) == 2

    cfg = tiny_config(**{"model.bn_splits": 4, "optim.batch_size": 16})
    x = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    model, y, bufs = _bn_forward(cfg, x)
    bns, split_bn = _split_modules(model)
    assert {m.splits for m in bns if isinstance(m, split_bn)} == {4} and len(bns) > 10
    torch.testing.assert_close(torch.cat([r[0]["y"], r[1]["y"]]), y, rtol=1e-4, atol=1e-5)
    for name, v in bufs.items():  # the running statistics: each rank's average of its groups
        torch.testing.assert_close((r[0]["bufs"][name] + r[1]["bufs"][name]) / 2, v, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("bn_splits,batch,world,want", [
    (8, 256, 1, (8, 32)), (8, 256, 8, (1, 32)), (8, 256, 2, (4, 32)),  # the paper's preset: groups of 32 always
    (8, 2048, 64, (1, 32)),  # more ranks than groups: a rank is a group
    (1, 16, 1, (1, 16)), (2, 8, 4, (1, 2))])
def test_bn_groups_per_rank(bn_splits, batch, world, want):
    from mocolab.config import check_bn_groups

    assert check_bn_groups(bn_splits, batch, world) == want


@pytest.mark.parametrize("bn_splits,batch,world,error", [
    (8, 256, 3, "must be divisible by the number of processes"),  # 8 groups cannot be shared by 3 ranks
    (6, 12, 4, "must be divisible by the number of processes"),
    (1, 16, 16, "BN groups of 1 image"), (4, 4, 1, "BN groups of 1 image"),
    (2, 10, 4, "optim.batch_size=10 must be divisible by the number of processes (4)")])
def test_bn_groups_that_cannot_be_honoured_are_config_errors(bn_splits, batch, world, error):
    from mocolab.config import ConfigError, check_bn_groups

    with pytest.raises(ConfigError, match=re.escape(error)):
        check_bn_groups(bn_splits, batch, world)


def test_a_bn_group_of_one_image_is_a_config_error():
    from mocolab.config import ConfigError

    with pytest.raises(ConfigError, match="BN groups of fewer than 2 images"):
        tiny_config(**{"model.bn_splits": 8, "optim.batch_size": 8})


def _shuffle_part(rank, out):
    x = (100 * rank + torch.arange(B, dtype=torch.float32)).view(B, 1)  # this rank's samples
    g = torch.Generator().manual_seed(rank)  # only rank 0's permutation counts (broadcast)
    x_shuffled, idx_unshuffle = du.batch_shuffle(x, g)
    restored = du.batch_unshuffle(x_shuffled * 1.0, idx_unshuffle)
    torch.save({"x": x, "shuffled": x_shuffled, "restored": restored, "perm": idx_unshuffle}, f"{out}/shuffle{rank}.pt")

    # features of a dataset whose size is not a multiple of the world size: all, once, in order
    n = 7
    data = TensorData(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous(),
                      torch.arange(n), ["c"])
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    torch.manual_seed(0)
    net[1].reset_parameters()
    f, y = extract_features(net, data, [0.0] * 3, [1.0] * 3, batch_size=2)
    torch.save({"f": f, "y": y}, f"{out}/feat{rank}.pt")


def test_cross_rank_shuffle_and_feature_gathering(two_ranks):
    r = [torch.load(two_ranks / f"shuffle{i}.pt", weights_only=True) for i in (0, 1)]
    for i in (0, 1):
        assert torch.equal(r[i]["restored"], r[i]["x"])  # unshuffle restores this rank's order
        came_from = (r[i]["shuffled"] // 100).long().flatten()
        assert (came_from != i).any(), "no sample moved across ranks"
    both = torch.cat([r[0]["shuffled"], r[1]["shuffled"]]).flatten().sort().values
    assert torch.equal(both, torch.cat([r[0]["x"], r[1]["x"]]).flatten().sort().values)  # a permutation
    assert torch.equal(r[0]["perm"], r[1]["perm"])  # one permutation, from rank 0

    feats = [torch.load(two_ranks / f"feat{i}.pt", weights_only=True) for i in (0, 1)]
    assert feats[0]["y"].tolist() == list(range(7)) and torch.equal(feats[0]["f"], feats[1]["f"])
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    torch.manual_seed(0)
    net[1].reset_parameters()
    data = TensorData(torch.arange(7, dtype=torch.uint8).view(7, 1, 1, 1).expand(7, 3, 2, 2).contiguous(),
                      torch.arange(7), ["c"])
    f, _ = extract_features(net, data, [0.0] * 3, [1.0] * 3)
    torch.testing.assert_close(feats[0]["f"], f)


def test_sync_bn_option_converts_and_needs_one_split():
    from mocolab.config import ConfigError

    model = build_method(tiny_config(**{"model.sync_bn": True, "model.bn_splits": 1}))
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.encoder_q.modules())
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.encoder_k.modules())
    with pytest.raises(ConfigError, match="sync_bn=true needs model.bn_splits=1"):
        tiny_config(**{"model.sync_bn": True})


@pytest.mark.slow
def test_torchrun_pretrains_then_resumes_on_one_process(cifar_dir, tmp_path, capsys):
    """torchrun --nproc_per_node=2 (real processes) pretrains and evaluates kNN sharded over the
    ranks; the one-process kNN and the one-process resume run in this process."""
    from mocolab.cli import main

    out = tmp_path / "run"
    common = ["--data", str(cifar_dir), "--out", str(out), "model.width=8", "model.hidden_dim=32", "data.limit=128",
              "optim.batch_size=32", "model.bn_splits=4", "moco.queue_size=128", "run.log_every=2", "data.workers=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port"]
    res = subprocess.run([*torchrun, str(_port()), "-m", "mocolab", "pretrain", "--epochs", "1", *common],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 4 and 0 <= summary["knn_top1"] <= 100
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # rank 0 alone writes
    assert safe_load(out / "checkpoints" / "epoch_0001.pth")["progress"]["images"] == 128

    # kNN of the final checkpoint: one process, and sharded over 2 ranks, agree with the monitor
    knn = ["knn", "--checkpoint", str(out / "checkpoints" / "final.pth"), "--data", str(cifar_dir), "--limit", "128"]

    def one_process():
        capsys.readouterr()
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            assert main(knn) == 0
        finally:
            torch.set_num_threads(threads)
        return capsys.readouterr().out

    def two_ranks():
        res = subprocess.run([*torchrun, str(_port()), "-m", "mocolab", *knn], capture_output=True, text=True,
                             timeout=600, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        return res.stdout

    for launch in (one_process, two_ranks):
        assert launch().count("kNN top-1") == 1  # rank 0 reports
        (found,) = (out / "checkpoints").glob("final.knn_k200_t0.1_backbone.seed0.*.json")  # both runs: one file
        got = json.loads(found.read_text())
        assert got["test_size"] == 128 and abs(got["knn_top1"] - summary["knn_top1"]) <= 100 / 128 + 1e-9  # one image

    assert main(["pretrain", "--epochs", "2", "--resume", "auto", *common]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 1 and summary["steps"] == 8
