import pytest

from mocolab.config import ConfigError, apply_overrides, build_config, from_dict, load_preset, preset_names


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_validates(name):
    cfg = build_config(name)
    assert from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()  # the saved dict round-trips


def test_paper_defaults():
    v1, v2, r18 = load_preset("mocov1_r50_imagenet"), load_preset("mocov2_r50_imagenet"), load_preset("cifar10_r18")
    assert (v1.moco.queue_size, v1.moco.m, v1.moco.T, v1.model.head, v1.data.augment) == (
        65536, 0.999, 0.07, "linear", "v1")
    assert (v2.moco.T, v2.model.head, v2.optim.schedule, v2.data.augment) == (0.2, "mlp", "cosine", "v2")
    assert (r18.optim.batch_size, r18.optim.lr, r18.optim.weight_decay, r18.moco.queue_size, r18.moco.m,
            r18.moco.T, r18.model.bn_splits) == (512, 0.06, 5e-4, 4096, 0.99, 0.1, 8)


def test_overrides_dotted_and_short():
    cfg = build_config("cifar10_cpu", ["optim.lr=0.1", "queue_size=1024", "symmetric=true", "milestones=[0.5,0.9]"])
    assert cfg.optim.lr == 0.1 and cfg.moco.queue_size == 1024 and cfg.moco.symmetric is True
    assert cfg.optim.milestones == [0.5, 0.9]


@pytest.mark.parametrize("override,message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'; did you mean"),
    ("nope.lr=1", "unknown config group 'nope'"),
    ("optim.batch_size=abc", "optim.batch_size='abc' is not a valid int"),
    ("optim.batch_size=2.5", "not a valid int"),
    ("moco.symmetric=maybe", "not a valid bool"),
    ("lr", "must look like key=value"),
    ("model.arch=vgg", "model.arch must be"),
    ("moco.m=1.5", "moco.m must lie in [0, 1)"),
    ("optim.batch_size=102", "divisible by model.bn_splits"),
    ("data.crop_scale=[0.5,0.2]", "data.crop_scale must be [] or [min, max]"),
    ("data.crop_scale=[0.5]", "data.crop_scale must be [] or [min, max]"),
    ("data.small_crops=-1", "data.small_crops must be >= 0"),
    ("data.small_crop_scale=[0.5,0.1]", "data.small_crop_scale must be [min, max]"),
    ("run.compile_mode=fast", "run.compile_mode must be one of: default, reduce-overhead, max-autotune"),
])
def test_bad_overrides_give_clear_errors(override, message):
    with pytest.raises(ConfigError, match=None) as e:
        build_config("cifar10_cpu", [override])
    assert message in str(e.value)


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ConfigError, match="unknown preset 'cifar10_cp'.*did you mean 'cifar10_cpu'"):
        load_preset("cifar10_cp")


def test_yaml_file_preset(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("optim: {lr: 0.5}\nmodel: {width: 8}\n")
    cfg = load_preset(str(p))
    assert cfg.optim.lr == 0.5 and cfg.model.width == 8
    p.write_text("optim: {lr: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_preset(str(p))
    p.write_text("optim: {speed: 3}\n")
    with pytest.raises(ConfigError, match="unknown config key"):
        load_preset(str(p))


def test_apply_overrides_keeps_types():
    cfg = apply_overrides(build_config("cifar10_cpu"), ["run.budget_minutes=2", "data.mean=0.1,0.2,0.3"])
    assert cfg.run.budget_minutes == 2.0 and isinstance(cfg.run.budget_minutes, float)
    assert cfg.data.mean == [0.1, 0.2, 0.3]


@pytest.mark.parametrize("extra", ["data.backend=pil", "moco.symmetric=true"])
def test_multi_crop_needs_the_tensor_backend_and_one_query_view(extra):
    with pytest.raises(ConfigError, match="data.small_crops needs data.backend=tensor and moco.symmetric=false"):
        build_config("cifar10_cpu", ["data.small_crops=2", extra])
