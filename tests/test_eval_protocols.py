"""The evaluation protocols (issue #3): linear probe, frozen backbone, label subsets, supervised
baseline, `mocolab compare` and the new sub-commands' errors."""

import json
from pathlib import Path

import pytest
import torch

from mocolab.augment import BatchAugment
from mocolab.cli import main
from mocolab.data import TensorData, load_splits
from mocolab.eval.classify import Classifier, FitConfig, crop_flip, fit
from mocolab.eval.finetune import finetune
from mocolab.eval.linear import linear_cached, linear_paper
from mocolab.eval.subsets import label_subset
from mocolab.models.backbones import build_backbone, torchvision_model

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def _toy_images(n=64, classes=4, size=16, seed=0) -> TensorData:
    """uint8 images whose class sets the mean colour, so that a tiny net can tell them apart."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    base = torch.linspace(40, 215, classes)[y].view(n, 1, 1, 1)
    x = (base + 30 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 255).to(torch.uint8)
    return TensorData(x, y, [f"c{i}" for i in range(classes)])


def _tiny_net(seed=0):
    torch.manual_seed(seed)
    return build_backbone("resnet18", 8, "cifar")


# -- linear probe ----------------------------------------------------------------------------

def test_cached_linear_probe_is_perfect_on_linearly_separable_features():
    """Labels are argmax(W f) with a margin: separable by a hyperplane, not by nearest centroid."""
    g = torch.Generator().manual_seed(0)
    D, C = 32, 5
    W = torch.randn(C, D, generator=g)
    f = torch.randn(6000, D, generator=g) * torch.linspace(0.2, 5.0, D) + 3.0  # unscaled, off-centre
    scores = f @ W.t()
    top2 = scores.topk(2, dim=1).values
    keep = (top2[:, 0] - top2[:, 1]) > 1.0  # a margin
    f, y = f[keep], scores[keep].argmax(1)
    f_tr, y_tr, f_te, y_te = f[:3000], y[:3000], f[3000:], y[3000:]
    res = linear_cached(f_tr, y_tr, f_te, y_te, C)
    assert res["train_top1"] == 100.0, res
    assert res["top1"] >= 99.0, res  # unseen points of the same separable problem
    # nearest class mean is not enough here, so the probe really fits a hyperplane
    means = torch.stack([f_tr[y_tr == c].mean(0) for c in range(C)])
    centroid = 100.0 * ((f_te[:, None] - means).norm(dim=2).argmin(1) == y_te).float().mean().item()
    assert centroid < 95.0


# -- frozen backbone -------------------------------------------------------------------------

def test_paper_linear_protocol_keeps_the_backbone_bit_identical():
    net, _dim = _tiny_net()
    net.train()
    with torch.no_grad():  # non-trivial BN running statistics, as a pretrained net has
        for _ in range(3):
            net(torch.randn(16, 3, 16, 16) * 2 + 0.5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert any("running_mean" in k and v.abs().sum() > 0 for k, v in before.items())
    data = _toy_images()
    seen_modes = []
    hook = net.bn1.register_forward_pre_hook(lambda m, a: seen_modes.append(m.training))
    fc = FitConfig(epochs=3, batch_size=16, lr=30.0, momentum=0.9, weight_decay=0.0, milestones=[0.6, 0.8])
    res = linear_paper(net, data, data, MEAN, STD, 16, fc, torch.device("cpu"))
    hook.remove()
    after = net.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():  # weights, BN running stats and num_batches_tracked
        assert torch.equal(v, after[k]), k
    assert seen_modes and not any(seen_modes)  # BN in eval mode at every forward
    assert all(p.grad is None and not p.requires_grad for p in net.parameters())
    assert res["steps"] == 12 and 0.0 <= res["top1"] <= 100.0


def test_paper_linear_layer_starts_as_the_official_code(monkeypatch):
    """main_lincls.py: fc.weight ~ N(0, 0.01), fc.bias = 0 (not nn.Linear's uniform init)."""
    import mocolab.eval.linear as lin

    seen = {}

    def no_training(model, groups, *a, **k):  # what fit() receives
        seen["w"], seen["b"] = model.fc.weight.detach().clone(), model.fc.bias.detach().clone()
        return {"steps": 0}

    monkeypatch.setattr(lin, "fit", no_training)
    net, _ = build_backbone("resnet18", 64, "cifar")  # 512 features x 4 classes: 2048 weights
    torch.manual_seed(3)
    lin.linear_paper(net, _toy_images(8), _toy_images(8), MEAN, STD, 16, FitConfig(), torch.device("cpu"))
    w, b = seen["w"], seen["b"]
    assert w.shape == (4, 512) and torch.equal(b, torch.zeros(4))
    assert abs(w.std().item() - 0.01) < 0.001 and abs(w.mean().item()) < 0.001  # nn.Linear's: std 0.026


class _Drifting(torch.nn.Module):
    """A backbone with a buffer that moves even in eval mode (a bug the sanity check must catch)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.register_buffer("seen", torch.zeros(1))

    def forward(self, x):
        self.seen += 1  # in eval mode, without gradient: as a frozen backbone runs
        return self.conv(x).mean((2, 3))  # N x 8


def test_paper_linear_protocol_fails_if_the_frozen_backbone_changed():
    torch.manual_seed(0)
    data = _toy_images(32)
    fc = FitConfig(epochs=1, batch_size=16, lr=30.0, milestones=[0.6, 0.8])
    with pytest.raises(RuntimeError, match="frozen backbone changed.*1 of 3 tensors, first seen"):
        linear_paper(_Drifting(), data, data, MEAN, STD, 16, fc, torch.device("cpu"))


def test_finetune_trains_the_whole_network_and_the_frozen_classifier_does_not():
    net, dim = _tiny_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    data = _toy_images()
    fc = FitConfig(epochs=2, batch_size=16, lr=0.05, schedule="cosine")
    res = finetune(net, data, data, 0.5, MEAN, STD, 16, fc, torch.device("cpu"))
    changed = [k for k, v in net.state_dict().items() if not torch.equal(before[k], v)]
    assert "conv1.weight" in changed and "bn1.running_mean" in changed
    assert res["labeled_images"] == 32 and res["steps"] == 4
    # the frozen variant: .train() keeps the backbone's BN in eval mode
    frozen = Classifier(_tiny_net()[0], dim, 4, frozen=True).train()
    assert frozen.training and frozen.fc.training and not frozen.backbone.training
    assert not any(m.training for m in frozen.backbone.modules())


def test_classifier_loop_learns_a_toy_problem():
    net, dim = _tiny_net()
    model = Classifier(net, dim, 4)
    aug = BatchAugment(crop_flip(16, (0.5, 1.0)), MEAN, STD)
    fc = FitConfig(epochs=8, batch_size=16, lr=0.05, schedule="cosine", log_every=4)
    stats = fit(model, [{"params": model.parameters()}], _toy_images(), aug, fc, torch.device("cpu"))
    losses = [r["loss"] for r in stats["history"]]
    assert losses[-1] < 0.7 * losses[0], losses
    assert stats["history"][-1]["lr"] < 0.01 * fc.lr  # the cosine schedule ran to its end


# -- label subsets ---------------------------------------------------------------------------

def test_label_subsets_are_balanced_seeded_and_deterministic():
    counts = [100, 120, 140, 160, 180, 200, 220, 240, 260, 280]
    labels = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])[torch.randperm(sum(counts))]
    for fraction in (0.01, 0.1, 0.5, 1.0):
        idx = label_subset(labels, fraction, seed=0)
        got = torch.bincount(labels[idx], minlength=10).tolist()
        assert got == [max(1, int(fraction * c + 0.5)) for c in counts], (fraction, got)
        assert len(set(idx.tolist())) == len(idx)
    assert torch.equal(label_subset(labels, 0.1, 3), label_subset(labels, 0.1, 3))
    assert not torch.equal(label_subset(labels, 0.1, 3), label_subset(labels, 0.1, 4))
    assert torch.equal(label_subset(labels, 1.0, 5), torch.arange(len(labels)))
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            label_subset(labels, bad, 0)


def test_label_subsets_of_real_cifar_come_from_train_only(cifar_dir):
    splits = load_splits(str(cifar_dir), 32, limit=1000, decode=False)
    train, test = splits.train_files, splits.test_files
    idx = label_subset(torch.tensor(train.labels), 0.1, seed=0)
    chosen = [train.files[i] for i in idx]
    assert len(chosen) == 100
    assert torch.bincount(torch.tensor([train.labels[i] for i in idx])).tolist() == [10] * 10
    test_files = {p.resolve() for p in test.files}
    assert not test_files & {p.resolve() for p in chosen}
    assert all(p.resolve().is_relative_to((cifar_dir / "train").resolve()) for p in chosen)


# -- supervised baseline and compare (real CIFAR-10 subsets) ---------------------------------

# 64 steps; measured here: the logged loss goes from ~2.4 to ~2.05
SUP = ["--lr", "0.4", "model.width=8", "data.limit=512", "optim.batch_size=64", "run.log_every=4"]


@pytest.fixture(scope="module")
def supervised_run(cifar_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sup") / "sup_run"
    rc = main(["supervised", "--preset", "cifar10_cpu", "--data", str(cifar_dir), "--out", str(out),
               "--epochs", "8", *SUP])
    assert rc == 0
    return out


@pytest.mark.slow
def test_supervised_baseline_loss_falls_and_exports_like_pretraining(supervised_run):
    out = supervised_run
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "backbone.pth", "backbone.json",
                 "checkpoints/final.pth"):
        assert (out / name).exists(), name
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) >= 10
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.15, losses
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 8 and summary["images_per_second"] > 0 and summary["wall_seconds"] > 0
    assert summary["train_top1"] > 10.0 and 0.0 <= summary["test_top1"] <= 100.0
    meta = json.loads((out / "backbone.json").read_text())
    assert {"arch", "width", "stem", "feature_dim", "image_size", "mean", "std"} <= set(meta)
    assert (meta["arch"], meta["width"], meta["stem"], meta["feature_dim"]) == ("resnet10", 8, "cifar", 64)
    tv = torchvision_model("resnet10", 8, "cifar")
    tv.load_state_dict(torch.load(out / "backbone.pth", weights_only=True), strict=True)


@pytest.mark.slow
def test_compare_writes_the_table_and_the_chart(supervised_run, cifar_dir, tmp_path, capsys, caplog):
    out = tmp_path / "cmp"
    args = ["compare", "random:cifar10_cpu", str(supervised_run), "--data", str(cifar_dir), "--out", str(out),
            "--limit", "200", "--epochs-finetune", "1", "--fractions", "0.1", "1.0"]
    assert main(args) == 0
    table = json.loads((out / "compare.json").read_text())
    cols = ["kNN", "linear (cached features)", "fine-tune 10% labels", "fine-tune 100% labels"]
    assert table["columns"] == cols and table["limit"] == 200
    names = [r["name"] for r in table["rows"]]
    assert names == ["random init (cifar10_cpu)", "sup_run"]
    assert [r["method"] for r in table["rows"]] == ["random init", "supervised"]
    md = (out / "compare.md").read_text()
    assert "| model | method | " + " | ".join(cols) + " |" in md
    for r in table["rows"]:
        assert all(0.0 <= r["top1"][c] <= 100.0 for c in cols)
        row = f"| {r['name']} | {r['method']} | " + " | ".join(f"{r['top1'][c]:.2f}" for c in cols) + " |"
        assert row in md
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # each result sits beside its checkpoint (random init: in --out), named by its protocol, seed and
    # settings; compare.json points at each
    res = json.loads(the_result(supervised_run, "backbone", "linear_cached").read_text())
    assert res["protocol"] == "linear (cached features)" and res["seed"] == 0 and res["settings"]["limit"] == 200
    assert res["top1"] == table["rows"][1]["top1"]["linear (cached features)"]
    assert table["rows"][1]["results"]["linear_cached"] == str(the_result(supervised_run, "backbone", "linear_cached"))
    ft = json.loads(the_result(supervised_run, "backbone", "finetune_0.1").read_text())
    assert ft["protocol"] == "fine-tune 10% labels" and ft["labeled_images"] == 20 and ft["test_size"] == 200
    assert json.loads(the_result(out, "random_cifar10_cpu_seed0", "knn").read_text())["protocol"] == "knn"
    # a second run reuses the matching results; other settings are computed into a file of their own
    knn_file = the_result(supervised_run, "backbone", "knn")
    stamp = knn_file.stat().st_mtime_ns
    caplog.clear()
    assert main(args) == 0
    assert knn_file.stat().st_mtime_ns == stamp
    assert json.loads((out / "compare.json").read_text())["rows"] == table["rows"]
    assert main(args[:-3] + ["--protocols", "knn", "--k", "20"]) == 0
    assert knn_file.stat().st_mtime_ns == stamp and json.loads(knn_file.read_text())["k"] == 200
    knns = sorted(supervised_run.glob("backbone.knn.seed0.*.json"))
    assert len(knns) == 2 and sorted(json.loads(f.read_text())["k"] for f in knns) == [20, 200]


def the_result(folder: Path, stem: str, key: str) -> Path:
    """The one result file of protocol `key` beside `stem` (STEM.KEY.seedS.DIGEST.json)."""
    found = list(Path(folder).glob(f"{stem}.{key}.seed*.json"))
    assert len(found) == 1, found
    return found[0]


def test_result_names_follow_the_settings_and_older_names_are_still_reused(tmp_path):
    from mocolab.eval.results import find_matching, latest_result, result_path, write_result

    base = tmp_path / "backbone.pth"
    st = {"key": "knn", "weights": {"size": 1}, "data": "/d", "limit": 0, "seed": 1, "k": 200}
    p = result_path(base, "knn", st)
    assert p.parent == tmp_path and p.name.startswith("backbone.knn.seed1.") and p.suffix == ".json"
    assert result_path(base, "knn", {**st, "weights": {"size": 2}}) == p  # re-trained weights: same name
    assert result_path(base, "knn", {**st, "k": 20}) != p and result_path(base, "knn", {**st, "data": "/e"}) != p
    assert result_path(base, "knn", {**st, "seed": 2}).name.startswith("backbone.knn.seed2.")
    assert find_matching(base, "knn", st) is None and latest_result(base, "knn") == {}
    # a result under the older name (BASE.KEY.json) is reused when its settings match
    (tmp_path / "backbone.knn.json").write_text(json.dumps({"top1": 5.0, "settings": st}))
    assert find_matching(base, "knn", st)["top1"] == 5.0
    assert find_matching(base, "knn", {**st, "weights": {"size": 2}}) is None  # other weights: not reused
    write_result(p, {"top1": 7.0, "settings": st})
    assert find_matching(base, "knn", st)["result_file"] == str(p) and latest_result(base, "knn")["top1"] == 7.0


# -- command-line errors ---------------------------------------------------------------------

@pytest.mark.parametrize("argv, text", [
    (["linear", "--checkpoint", "/no/such/backbone.pth", "--data", "/tmp"], "checkpoint not found"),
    (["linear", "--random-init", "cifar10_cpu", "--data", "/no/such/data"], "data folder not found"),
    (["linear", "--random-init", "no_such_preset", "--data", "/tmp"], "unknown preset"),
    (["finetune", "--random-init", "cifar10_cpu", "--data", "/tmp", "--label-fraction", "0"], "label fraction"),
    (["finetune", "--random-init", "cifar10_cpu", "--data", "/tmp", "--label-fraction", "1.5"], "label fraction"),
    (["supervised", "--data", "/no/such/data", "--out", "{tmp}/o"], "data folder not found"),
    (["supervised", "--preset", "nope", "--data", "/tmp", "--out", "{tmp}/o"], "unknown preset"),
    (["supervised", "--data", "/tmp", "--out", "{tmp}/o", "optim.lrr=1"], "unknown config key"),
    (["compare", "random:cifar10_cpu", "--data", "/tmp", "--out", "{tmp}/c", "--fractions", "0"], "label fraction"),
    (["compare", "{tmp}", "--data", "/tmp", "--out", "{tmp}/c"], "without backbone.pth"),
])
def test_bad_input_is_one_line_error(argv, text, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("mocolab: error:")]
    assert len(errors) == 1 and text in errors[0], err
    assert "Traceback" not in err


def test_new_commands_are_listed_in_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("linear", "finetune", "supervised", "compare"):
        assert cmd in out
