"""Packs image data into one file each (the encoded bytes, unchanged) and unpacks it again.

The GPU machine sees only the working tree and carried paths (64 MiB in all): 60,000 CIFAR-10
JPEGs cost 240 MB of disk blocks as files but 53 MB packed, and small subsets of BCCD (VOC
detection) and CamVid (segmentation) a few MB more. `devdata` writes the three packs that
benchmarks/gpu_check.sh reads (about 40 MiB together), and into wheels/ the wheels of the extras its rows
need that the device machine lacks (pycocotools for `mocolab detect`; the device has no network,
so they travel with the packs; `--no-wheels` leaves them out):

  python benchmarks/pack_data.py devdata ../shared/data .devdata
  python benchmarks/pack_data.py pack ../shared/data/cifar10 .devdata/cifar10.pack --per-class 3000
  python benchmarks/pack_data.py pack-voc ../shared/data/bccd/BCCD .devdata/bccd.pack --trainval 64 --test 16
  python benchmarks/pack_data.py pack-seg ../shared/data/camvid .devdata/camvid.pack --train 48 --val 12
  python benchmarks/pack_data.py unpack .devdata/cifar10.pack /tmp/cifar10
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

# what `devdata` packs: CIFAR-10 with 3,000 train images a class (all 1,000 test ones), BCCD and CamVid subsets
DEVDATA = {"cifar10_per_class": 3000, "bccd": (64, 16), "camvid": (48, 12)}
# the extras gpu_check's rows import that the device machine's python (3.12; RESULTS.md) lacks:
# binary wheels for it, downloaded here (the device has no network) and installed there by gpu_check.py
WHEELS = ["pycocotools"]
WHEELS_PYTHON = "3.12"


def write_pack(entries: list[tuple[str, bytes]], dst: Path) -> None:
    """entries: (relative path, file bytes) -> one torch.save'd file of paths, offsets (N+1) and bytes."""
    offsets = torch.tensor([0] + [len(b) for _, b in entries]).cumsum(0)
    data = torch.frombuffer(bytearray(b"".join(b for _, b in entries)), dtype=torch.uint8)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"paths": [p for p, _ in entries], "offsets": offsets, "data": data}, dst)
    print(f"packed {len(entries)} files, {data.numel() / 2**20:.1f} MiB -> {dst}")


def image_folder(src: Path, per_class: int = 0) -> list[tuple[str, bytes]]:
    """Every file under src, or with per_class > 0 the first per_class files (sorted) of each folder
    that holds files (split/class/ in an ImageFolder tree)."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    if per_class > 0:
        by_dir: dict[Path, list[Path]] = {}
        for p in files:
            by_dir.setdefault(p.parent, []).append(p)
        files = [p for group in by_dir.values() for p in group[:per_class]]
    return [(str(p.relative_to(src)), p.read_bytes()) for p in files]


def voc_subset(src: Path, n_trainval: int, n_test: int) -> list[tuple[str, bytes]]:
    """The first n of trainval and of test (ImageSets/Main) of a VOC tree: their annotations and
    JPEGs, and ImageSets/Main/{trainval,test}.txt listing them."""
    out = []
    for split, n in (("trainval", n_trainval), ("test", n_test)):
        names = (src / "ImageSets/Main" / f"{split}.txt").read_text().split()[:n]
        out.append((f"ImageSets/Main/{split}.txt", ("\n".join(names) + "\n").encode()))
        for name in names:
            out += [(f"Annotations/{name}.xml", (src / "Annotations" / f"{name}.xml").read_bytes()),
                    (f"JPEGImages/{name}.jpg", (src / "JPEGImages" / f"{name}.jpg").read_bytes())]
    return out


def seg_subset(src: Path, n_train: int, n_val: int) -> list[tuple[str, bytes]]:
    """The first n image/mask pairs (sorted) of train/ and val/ (images/NAME.jpg, masks/NAME.png)."""
    out = []
    for split, n in (("train", n_train), ("val", n_val)):
        for img in sorted((src / split / "images").glob("*.jpg"))[:n]:
            mask = src / split / "masks" / f"{img.stem}.png"
            out += [(f"{split}/images/{img.name}", img.read_bytes()), (f"{split}/masks/{mask.name}", mask.read_bytes())]
    return out


def unpack(src: Path, dst: Path) -> None:
    d = torch.load(src, weights_only=True)
    raw = d["data"].numpy().tobytes()
    off = d["offsets"].tolist()
    for i, rel in enumerate(d["paths"]):
        path = dst / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise SystemExit(f"{src}: refusing the path {rel!r} (outside the destination)")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw[off[i]:off[i + 1]])
    print(f"unpacked {len(d['paths'])} files -> {dst}")


def devdata(shared: Path, dst: Path) -> None:
    """The packs gpu_check.sh reads: dst/{cifar10,bccd,camvid}.pack from shared/ (../shared/data)."""
    write_pack(image_folder(shared / "cifar10", DEVDATA["cifar10_per_class"]), dst / "cifar10.pack")
    write_pack(voc_subset(shared / "bccd/BCCD", *DEVDATA["bccd"]), dst / "bccd.pack")
    write_pack(seg_subset(shared / "camvid", *DEVDATA["camvid"]), dst / "camvid.pack")


def download_wheels(dst: Path, python: str = WHEELS_PYTHON) -> bool:
    """dst/wheels/: WHEELS as manylinux x86-64 binary wheels for `python` (pip download, without
    dependencies: torch's numpy is there). False, with a warning, where pip cannot reach an index."""
    cmd = [sys.executable, "-m", "pip", "download", *WHEELS, "--no-deps", "--only-binary=:all:",
           "--python-version", python, "--platform", "manylinux2014_x86_64", "-d", str(dst / "wheels")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["?"])[-1]
        print(f"warning: no wheels for {', '.join(WHEELS)} ({tail}); gpu_check's detect rows will fail on a "
              f"machine without them", file=sys.stderr)
        return False
    print(f"wheels: {', '.join(WHEELS)} for python {python} -> {dst / 'wheels'}")
    return True


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="an image folder (ImageFolder tree or any files)")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--per-class", type=int, default=0, help="first N files of each folder (0: all)")
    p = sub.add_parser("pack-voc", help="a VOC tree's subset (BCCD)")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--trainval", type=int, default=DEVDATA["bccd"][0])
    p.add_argument("--test", type=int, default=DEVDATA["bccd"][1])
    p = sub.add_parser("pack-seg", help="a segmentation folder's subset (CamVid)")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--train", type=int, default=DEVDATA["camvid"][0])
    p.add_argument("--val", type=int, default=DEVDATA["camvid"][1])
    p = sub.add_parser("devdata", help="cifar10, bccd and camvid packs for gpu_check.sh")
    p.add_argument("shared", type=Path, help="the shared data folder (../shared/data)")
    p.add_argument("dst", type=Path, help="where the packs go (.devdata)")
    p.add_argument("--no-wheels", action="store_true", help="the packs only (no wheels/)")
    p = sub.add_parser("unpack")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "pack":
        write_pack(image_folder(a.src, a.per_class), a.dst)
    elif a.cmd == "pack-voc":
        write_pack(voc_subset(a.src, a.trainval, a.test), a.dst)
    elif a.cmd == "pack-seg":
        write_pack(seg_subset(a.src, a.train, a.val), a.dst)
    elif a.cmd == "devdata":
        devdata(a.shared, a.dst)
        if not a.no_wheels:
            download_wheels(a.dst)
    else:
        unpack(a.src, a.dst)


if __name__ == "__main__":
    main()
