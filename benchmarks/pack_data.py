"""Packs an image folder into one file (the encoded bytes, unchanged) and unpacks it again.

The GPU machine sees only the working tree and carried paths (64 MiB in all), and 60,000
CIFAR-10 JPEGs cost 240 MB of disk blocks as files but 53 MB as one packed file.

  python benchmarks/pack_data.py pack ../shared/data/cifar10 .devdata/cifar10.pack
  python benchmarks/pack_data.py unpack .devdata/cifar10.pack /tmp/cifar10
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def pack(src: Path, dst: Path) -> None:
    files = sorted(p for p in src.rglob("*") if p.is_file())
    blobs = [p.read_bytes() for p in files]
    offsets = torch.tensor([0] + [len(b) for b in blobs]).cumsum(0)
    data = torch.frombuffer(bytearray(b"".join(blobs)), dtype=torch.uint8)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"paths": [str(p.relative_to(src)) for p in files], "offsets": offsets, "data": data}, dst)
    print(f"packed {len(files)} files, {data.numel() / 2**20:.1f} MiB -> {dst}")


def unpack(src: Path, dst: Path) -> None:
    d = torch.load(src, weights_only=True)
    raw = d["data"].numpy().tobytes()
    off = d["offsets"].tolist()
    for i, rel in enumerate(d["paths"]):
        path = dst / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw[off[i]:off[i + 1]])
    print(f"unpacked {len(d['paths'])} files -> {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("pack", "unpack"):
        sys.exit(__doc__)
    (pack if sys.argv[1] == "pack" else unpack)(Path(sys.argv[2]), Path(sys.argv[3]))
