import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from torch import nn

from mocolab.data import TensorData
from mocolab.distributed import batch_shuffle
from mocolab.engine import Trainer
from mocolab.methods import build_method
from mocolab.models.backbones import build_backbone, infer_arch, torchvision_model
from mocolab.models.splitbn import SplitBatchNorm, fold_groups, unfold_groups
from mocolab.step import train_step


def reference_split_bn(x: torch.Tensor, bn: nn.BatchNorm2d, splits: int) -> torch.Tensor:
    """BN in training mode applied to each contiguous chunk separately: the reference."""
    chunks = x.chunk(splits)
    return torch.cat([F.batch_norm(c, None, None, bn.weight, bn.bias, True, 0.0, bn.eps) for c in chunks])


def test_shuffle_then_unshuffle_is_identity():
    x = torch.randn(12, 3, 2, 2)
    g = torch.Generator().manual_seed(1)
    xs, idx_un = batch_shuffle(x, g)
    assert not torch.equal(xs, x)  # it did move samples
    assert torch.equal(xs[idx_un], x)


def _split_bn_path(bn, x, path):
    """chunks: the eager CPU path; folded: the eager GPU path (forced here); grouped: torch.compile's."""
    if path == "grouped":
        return bn._grouped(x)
    bn.fold = path == "folded"
    return bn(x)


PATHS = ["chunks", "folded", "grouped"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_split_bn_equals_bn_per_chunk(channels_last, path):
    torch.manual_seed(0)
    bn = SplitBatchNorm(6, splits=3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(12, 6, 5, 4) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = _split_bn_path(bn, x1, path)
    ref = reference_split_bn(x2, bn, 3)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    if path != "grouped":  # the eager paths keep the input's memory format
        assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    g = torch.randn_like(y)
    (gx, gw, gb) = torch.autograd.grad(y, (x1, bn.weight, bn.bias), g)
    (rx, rw, rb) = torch.autograd.grad(ref, (x2, bn.weight, bn.bias), g)
    torch.testing.assert_close(gx, rx, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gb, rb, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("path", PATHS)
def test_split_bn_running_stats_and_eval_mode(path):
    torch.manual_seed(0)
    bn, plain = SplitBatchNorm(4, splits=2, momentum=1.0), nn.BatchNorm2d(4, momentum=1.0)
    x = torch.randn(8, 4, 3, 3)
    _split_bn_path(bn, x, path)
    assert int(bn.num_batches_tracked) == 1
    chunks = x.chunk(2)
    mean = torch.stack([c.mean(dim=(0, 2, 3)) for c in chunks]).mean(0)
    var = torch.stack([c.var(dim=(0, 2, 3), unbiased=True) for c in chunks]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    bn.eval()
    plain.load_state_dict(bn.state_dict())
    plain.eval()
    torch.testing.assert_close(bn(x), plain(x))


@pytest.mark.parametrize("momentum", [0.1, None])  # None: a cumulative average, as nn.BatchNorm2d
def test_folded_split_bn_running_stats_follow_the_chunk_path(momentum):
    """Three steps of the GPU path (groups folded into channels, forced here) leave the running
    statistics of the CPU path (chunks), for 2-D head features (SplitBatchNorm1d) too."""
    from mocolab.models.splitbn import SplitBatchNorm1d
    # the last two: one sample per group, one value per group and channel (the chunks take over)
    for cls, shape in ((SplitBatchNorm, (16, 5, 3, 3)), (SplitBatchNorm1d, (16, 5)), (SplitBatchNorm1d, (4, 5)),
                       (SplitBatchNorm, (4, 5, 1, 1))):
        a, b = cls(5, splits=4, momentum=momentum), cls(5, splits=4, momentum=momentum)
        a.fold, b.fold = False, True
        for step in range(3):
            x = torch.randn(*shape) * (step + 1) + step
            torch.testing.assert_close(b(x), a(x), rtol=1e-5, atol=1e-5)
        for name, buf in a.named_buffers():
            torch.testing.assert_close(dict(b.named_buffers())[name], buf, rtol=1e-5, atol=1e-6)


def test_split_bn_one_split_is_plain_bn():
    x = torch.randn(8, 4, 3, 3)
    a, b = SplitBatchNorm(4, splits=1), nn.BatchNorm2d(4)
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("channels_last", [False, True])
def test_fold_groups_moves_group_g_into_channel_block_g(channels_last):
    x = torch.randn(12, 5, 3, 2)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    f = fold_groups(x, 3)  # 4 x 15 x 3 x 2
    assert f.shape == (4, 15, 3, 2)
    for g in range(3):
        for j in range(4):
            assert torch.equal(f[j, 5 * g:5 * (g + 1)], x[4 * g + j])
    assert torch.equal(unfold_groups(f, 3), x)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert f.is_contiguous(memory_format=fmt) and unfold_groups(f, 3).is_contiguous(memory_format=fmt)
    assert torch.equal(unfold_groups(fold_groups(x[:, :, 0, 0], 3), 3), x[:, :, 0, 0])  # N x C features


def test_key_encoder_gets_no_gradient_and_moves_by_momentum():
    cfg = tiny_config()
    model = build_method(cfg)
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.1)
    x_q, x_k = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    k_before = [p.clone() for p in model.encoder_k.parameters()]
    q_before = [p.clone() for p in model.encoder_q.parameters()]
    train_step(model, opt, (x_q, x_k), m=0.9)
    assert all(p.grad is None for p in model.encoder_k.parameters())
    assert all(not p.requires_grad for p in model.encoder_k.parameters())
    # f_k = 0.9 f_k + 0.1 f_q(after the SGD step)
    for kb, pk, pq in zip(k_before, model.encoder_k.parameters(), model.encoder_q.parameters()):
        torch.testing.assert_close(pk, 0.9 * kb + 0.1 * pq)
    assert any(not torch.equal(a, b) for a, b in zip(q_before, model.encoder_q.parameters()))


def test_step_enqueues_keys_and_uses_earlier_keys_as_negatives():
    cfg = tiny_config(**{"moco.queue_size": 20})
    model = build_method(cfg)
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.0)  # lr 0: f_q and f_k stay equal
    model.train()
    x = torch.randn(8, 3, 16, 16)
    queue_before = model.queue.keys.clone()
    g = torch.Generator().manual_seed(0)
    train_step(model, opt, (x, x), m=0.0, generator=g)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        k = model.encode_key(x, g)  # same weights, same shuffle -> the enqueued keys
    torch.testing.assert_close(model.queue.keys[:8], k, rtol=1e-4, atol=1e-5)
    assert torch.equal(model.queue.keys[8:], queue_before[8:])
    assert int(model.queue.ptr) == 8


def test_shuffle_bn_changes_keys_only_with_split_bn():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 16, 16)
    for splits, changes in ((1, False), (2, True)):
        model = build_method(tiny_config(**{"model.bn_splits": splits}))
        model.train()
        with torch.no_grad():
            plain = model.encoder_k(x)
            shuffled = model.encode_key(x, torch.Generator().manual_seed(3))
        assert (not torch.allclose(plain, shuffled, atol=1e-5)) == changes


@pytest.mark.parametrize("arch,dim", [("resnet10", 512), ("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_backbone_exports_to_torchvision_strict(arch, dim, stem):
    net, feat = build_backbone(arch, 64, stem, bn_splits=4)
    assert feat == dim
    tv = torchvision_model(arch, 64, stem)
    tv.load_state_dict(net.state_dict(), strict=True)
    net.eval()
    tv.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(net(x), tv(x))
    assert infer_arch(net.state_dict()) == {"arch": arch, "width": 64, "stem": stem}


def test_width_option():
    net, feat = build_backbone("resnet18", 16, "cifar")
    assert feat == 128
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 128)
    assert infer_arch(net.state_dict())["width"] == 16


def test_predictor_is_trained_on_the_query_side_only():
    cfg = tiny_config(**{"model.predictor_dim": 32})
    model = build_method(cfg)
    model.train()
    pred = list(model.predictor.parameters())
    assert len(list(model.encoder_k.parameters())) == len(list(model.encoder_q.parameters()))  # f_k: no predictor
    assert all(any(p is t for t in model.learnable_params()) for p in pred)
    opt = torch.optim.SGD(model.learnable_params(), lr=0.1)
    before = [p.clone() for p in pred]
    x_q, x_k = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    q = model.encode_query(x_q)
    assert q.shape == (8, 16) and torch.allclose(q.norm(dim=1), torch.ones(8))
    train_step(model, opt, (x_q, x_k), m=1.0, generator=torch.Generator().manual_seed(0))  # m=1: f_k stays
    assert all(not torch.equal(b, p) for b, p in zip(before, pred))  # the predictor learns
    with torch.no_grad():
        k = model.encode_key(x_k, torch.Generator().manual_seed(0))  # f_k's head output: no predictor
    torch.testing.assert_close(model.queue.keys[:8], k)


def test_multi_crop_small_views_are_extra_queries_for_the_same_key():
    """loss = mean over all query crops of InfoNCE against the image's key (SwAV's multi-crop)."""
    from mocolab.losses import info_nce
    cfg = tiny_config()
    model = build_method(cfg)
    model.train()
    torch.manual_seed(0)
    x_q, x_k, x_s = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16), torch.randn(16, 3, 8, 8)  # 2 small per image
    loss, out = model(x_q, x_k, x_s, generator=torch.Generator().manual_seed(0))
    k = out["k"]
    with torch.no_grad():
        q, q_s = model.encode_query(x_q), model.encode_query(x_s)
        k_ref = model.encode_key(x_k, torch.Generator().manual_seed(0))
    neg = model.queue.keys
    ref = (info_nce(q, k_ref, neg, 0.2) + 2 * info_nce(q_s, torch.cat([k_ref, k_ref]), neg, 0.2)) / 3
    torch.testing.assert_close(k, k_ref)
    torch.testing.assert_close(loss.detach(), ref)
    # small crop j of image i (row 8 j + i) is a query for key i only: matching it to another
    # image's key changes the loss
    wrong = (info_nce(q, k_ref, neg, 0.2) + 2 * info_nce(q_s, torch.cat([k_ref, k_ref.roll(1, 0)]), neg, 0.2)) / 3
    assert not torch.allclose(wrong, ref)
    # the small views' gradient reaches f_q
    model.zero_grad()
    loss.backward()
    assert all(p.grad is not None for p in model.encoder_q.parameters())


def test_zero_init_residual_blocks_start_as_identity():
    from torchvision.models.resnet import BasicBlock

    net, _ = build_backbone("resnet18", 8, "cifar", zero_init_residual=True)
    net.eval()
    blocks = [b for b in net.modules() if isinstance(b, BasicBlock)]
    assert len(blocks) == 8 and all(torch.count_nonzero(b.bn2.weight) == 0 for b in blocks)
    x = torch.relu(torch.randn(2, 8, 8, 8))  # a block's input is a ReLU output
    torch.testing.assert_close(net.layer1[1](x), x)  # relu(0 + x) = x
    plain, _ = build_backbone("resnet18", 8, "cifar")
    assert torch.count_nonzero(plain.layer1[1].bn2.weight) == 8


@pytest.mark.slow
def test_compiled_encoders_train_like_eager():
    """run.compile=true compiles both encoders in place: same state_dict keys (checkpoints and
    exports unchanged), and the same losses and weights as eager training, step after step."""
    from mocolab.pretrain import build_model

    cpu = torch.device("cpu")
    models = []
    for flag in ("false", "true"):
        torch.manual_seed(0)
        models.append(build_model(tiny_config(**{"run.compile": flag, "model.bn_splits": 1}), cpu))
    eager, compiled = models
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    assert compiled.encoder_q._compiled_call_impl is not None and eager.encoder_q._compiled_call_impl is None
    data = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 16, 16, generator=data), torch.randn(8, 3, 16, 16, generator=data)) for _ in range(3)]
    losses = []
    for model in models:
        opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.05, momentum=0.9)
        g = torch.Generator().manual_seed(0)
        losses.append(torch.stack([train_step(model, opt, (x_q, x_k), m=0.9, generator=g)[0] for x_q, x_k in batches]))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-4)
    for a, b in zip(eager.state_dict().values(), compiled.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("over,compiled", [
    ({"run.compile": "true"}, True),
    ({"run.compile": "true", "run.compile_min_minutes": 5, "run.budget_minutes": 10}, True),
    ({"run.compile": "true", "run.compile_min_minutes": 5, "run.budget_minutes": 3}, False),
    ({"run.compile": "true", "run.compile_min_minutes": 5}, False),  # an epoch run
    ({"run.compile": "false", "run.budget_minutes": 10}, False),
])
def test_compile_only_for_runs_long_enough(over, compiled, monkeypatch, tmp_path):
    """run.compile_min_minutes: a cold compile only under a long enough budget; short and epoch
    runs stay eager (an empty inductor cache: nothing is warm)."""
    from mocolab.pretrain import build_model

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    model = build_model(tiny_config(**over), torch.device("cpu"))
    assert (model.encoder_q._compiled_call_impl is not None) == compiled
    assert (model.encoder_k._compiled_call_impl is not None) == compiled
    assert model.compiled == compiled
    # the training loop compiles its augmentation along with the encoders
    data = TensorData(torch.zeros(16, 3, 16, 16, dtype=torch.uint8), torch.zeros(16, dtype=torch.long), [])
    trainer = Trainer(tiny_config(**over), model, data, torch.device("cpu"), None, None)
    assert trainer.feed.aug.compile == compiled


@pytest.mark.parametrize("mode,expected", [("default", None), ("reduce-overhead", "reduce-overhead"),
                                           ("max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs")])
def test_compile_mode_reaches_torch_compile(monkeypatch, mode, expected):
    """run.compile_mode is torch.compile's mode for both encoders; CUDA graphs (and so the
    step's marks) only on CUDA: the CPU compiles the same graphs without them."""
    from mocolab.pretrain import build_model
    modes = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: modes.append(kw.get("mode")))
    model = build_model(tiny_config(**{"run.compile": "true", "run.compile_mode": mode}), torch.device("cpu"))
    assert modes == [expected, expected] and model.compiled and not model.cudagraphs


@pytest.mark.parametrize("device,mode,expected", [
    ("cuda", "reduce-overhead", True), ("cuda:1", "max-autotune", True), ("cuda", "default", False),
    ("cuda", "max-autotune-no-cudagraphs", False), ("cpu", "reduce-overhead", False), ("cpu", "max-autotune", False)])
def test_cuda_graphs_only_in_their_modes_on_cuda(device, mode, expected):
    from mocolab.compiling import uses_cudagraphs
    assert uses_cudagraphs(tiny_config(**{"run.compile_mode": mode}), torch.device(device)) is expected


def test_step_marks_each_cuda_graph_step(monkeypatch):
    """With CUDA graphs every moco_step starts with cudagraph_mark_step_begin (the previous
    step's graph outputs may then be overwritten: the step keeps none of them); without, never."""
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    model = build_method(tiny_config(**{"model.bn_splits": 1}))
    opt = torch.optim.SGD(model.encoder_q.parameters(), lr=0.05)
    x = torch.randn(8, 3, 16, 16)
    train_step(model, opt, (x, x.flip(3)), m=0.9)
    assert marks == []
    model.cudagraphs = True
    for _ in range(3):
        train_step(model, opt, (x, x.flip(3)), m=0.9)
    assert len(marks) == 3


@pytest.mark.parametrize("features,marks", [("head", 2), ("backbone", 0)])
def test_knn_monitor_marks_cuda_graph_steps(monkeypatch, features, marks):
    """kNN on the compiled f_q under CUDA graphs: each batch is an inference step of its own
    (one graph, replayed); the backbone alone is not compiled and needs no marks."""
    from mocolab.pretrain import knn_monitor
    calls = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: calls.append(1))
    cfg = tiny_config(**{"run.knn_features": features, "run.knn_k": 3})
    model = build_method(cfg)
    model.cudagraphs = True
    g = torch.Generator().manual_seed(0)
    split = TensorData(torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8, generator=g), torch.arange(10) % 2,
                       ["a", "b"])
    out = knn_monitor(cfg, split, split, torch.device("cpu"), None)(model)
    assert len(calls) == marks and 0 <= out["knn_top1"] <= 100  # one batch of the bank, one of the queries


def test_compile_without_a_cxx_compiler_trains_eagerly(monkeypatch):
    """torch.compile's CPU backend needs a C++ compiler: a machine without one trains eagerly."""
    import mocolab.compiling
    from mocolab.pretrain import build_model

    monkeypatch.setattr(mocolab.compiling.shutil, "which", lambda name: None)
    model = build_model(tiny_config(**{"run.compile": "true"}), torch.device("cpu"))
    assert model.encoder_q._compiled_call_impl is None and model.encoder_k._compiled_call_impl is None
    assert not model.compiled
