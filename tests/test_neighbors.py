"""Chunked top-k (the same as the whole similarity matrix), near-duplicate groups, leakage, and
`mocolab neighbors` end to end with its page; one-line errors."""

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import cifar_subset
from PIL import Image

import mocolab
from mocolab import cli
from mocolab.nearest import duplicate_groups, leaks, top_k


@pytest.mark.parametrize("exclude_self", [False, True])
def test_chunked_top_k_matches_the_full_matrix(exclude_self):
    torch.manual_seed(0)
    bank = torch.randn(300, 16)
    query = bank if exclude_self else torch.randn(70, 16)
    sims, rows = top_k(query, bank, 5, exclude_self=exclude_self, query_chunk=32, bank_chunk=47)
    full = F.normalize(query, dim=1) @ F.normalize(bank, dim=1).t()
    if exclude_self:
        full.fill_diagonal_(float("-inf"))
    ref_w, ref_i = full.topk(5, dim=1)
    assert torch.allclose(sims, ref_w, atol=1e-6) and torch.equal(rows, ref_i)


def test_duplicate_groups_and_leaks():
    sims = torch.tensor([[0.99, 0.5], [0.99, 0.4], [0.97, 0.2], [0.3, 0.1]])
    rows = torch.tensor([[1, 3], [0, 3], [1, 0], [0, 1]])
    assert duplicate_groups(sims, rows, 0.95) == [[0, 1, 2]]
    assert duplicate_groups(sims, rows, 0.98) == [[0, 1]]
    assert leaks(sims, 0.98).tolist() == [0, 1]


@pytest.fixture(scope="module")
def planted(tmp_path_factory, cifar_dir):
    """train/test of real CIFAR JPEGs, plus a flipped copy of a training image in test/."""
    root = cifar_subset(cifar_dir, tmp_path_factory.mktemp("nb"), 4)
    src = sorted((root / "train" / "cat").glob("*.jpg"))[0]
    Image.open(src).transpose(Image.FLIP_LEFT_RIGHT).save(root / "test" / "cat" / "planted.png")
    shutil.copy(src, root / "train" / "cat" / "exact_copy.jpg")
    return root


def test_cli_leakage_duplicates_and_page(planted, tmp_path, capsys):
    out = tmp_path / "nb"
    # a backbone pretrained for seconds is not a feature extractor: a random one still finds exact copies
    argv = ["neighbors", "random:cifar10_cpu", "--data", str(planted), "--out", str(out), "--k", "3",
            "--duplicates", "0.9999", "--leakage", "0.9999", "--quiet"]
    assert cli.main(argv) == 0
    r = json.loads((out / "neighbors.json").read_text())
    assert r["bank_images"] == 9 and r["query_images"] == 9 and r["k"] == 3
    assert r["duplicate_groups"] == 1 and r["duplicate_images"] == 2  # the exact copy and its original
    lines = (out / "duplicates.csv").read_text().splitlines()
    assert lines[0] == "group,size,path" and len(lines) == 3 and "cat/exact_copy.jpg" in "".join(lines)
    rows = (out / "neighbors.csv").read_text().splitlines()
    assert rows[0] == "query,rank,neighbor,cosine" and len(rows) == 1 + 9 * 3
    html = (out / "index.html").read_text()
    assert html.count("data:image/jpeg;base64,") >= 9 * 4 and "Train/test leakage" in html
    assert cli.main(argv) == 2 and "--overwrite" in capsys.readouterr().err  # the files of a run stay
    assert cli.main(argv + ["--overwrite"]) == 0


def test_api_neighbors_find_a_flipped_copy_with_its_own_query(planted):
    model = mocolab.load("random:cifar10_cpu", device="cpu")
    train = mocolab.embed(model, planted / "train", workers=0)
    test = mocolab.embed(model, planted / "test", workers=0)
    sims, idx = mocolab.neighbors(train, test, k=2)
    assert sims.shape == (len(test), 2) and bool((sims[:, 0] >= sims[:, 1]).all())


@pytest.mark.parametrize("what,match", [("source", "not found"), ("empty", "no images found"),
                                        ("nosplit", "--leakage needs --query")])
def test_cli_bad_input(planted, tmp_path, capsys, what, match):
    (tmp_path / "empty").mkdir()
    src = str(tmp_path / "nope.pth") if what == "source" else "random:cifar10_cpu"
    data = {"empty": tmp_path / "empty", "nosplit": planted / "train"}.get(what, planted)
    argv = ["neighbors", src, "--data", str(data), "--out", str(tmp_path / "o"), "--quiet"]
    assert cli.main(argv + (["--leakage"] if what == "nosplit" else [])) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mocolab: error:") and match in err and "\n" not in err
