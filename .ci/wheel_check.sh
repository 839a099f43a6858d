#!/usr/bin/env bash
# The wheel a user installs, checked away from the source tree (called by .ci/run; needs `make install`).
# 1. `python -m build` makes the sdist and, from it, the wheel; `twine check` reads their metadata.
# 2. A clean venv in a temp folder gets the wheel (pip install --no-index: its dependencies must
#    already be there). The dependencies are borrowed from .venv rather than downloaded again (torch
#    is GBs): a .pth line points at a folder of links to .venv's site-packages *minus* mocolab's own
#    editable install, so the only mocolab the venv can import is the wheel's.
# 3. From a folder outside the repository: `mocolab presets` lists every preset shipped in src/
#    (package data), a 1-epoch `pretrain` on a tiny image folder runs, and `mocolab.load` works.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=$REPO/.venv/bin/python
TMP=$(mktemp -d "${TMPDIR:-/tmp}/mocolab_wheel.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
t0=$SECONDS

# WHEEL_FROM=HEAD builds from the last commit (git archive) instead of the working tree (CI: a fresh clone,
# the same thing), for a checkout where someone else's work in progress is half-written
SRC=.
if [ "${WHEEL_FROM:-tree}" = HEAD ]; then
  SRC=$TMP/src && mkdir "$SRC" && git archive HEAD | tar -x -C "$SRC"
fi
"$PY" -m build --outdir "$TMP/dist" "$SRC" >"$TMP/build.log" 2>&1 || { tail -20 "$TMP/build.log"; exit 1; }
"$PY" -m twine check --strict "$TMP"/dist/*
WHEEL=$(ls "$TMP"/dist/mocolab-*.whl)

"$PY" -m venv "$TMP/venv"
"$TMP/venv/bin/python" -m pip uninstall --quiet --yes setuptools  # the venv's old copy would hide .venv's (torch needs >= 77)
SITE=$("$TMP/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
BORROWED=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
mkdir "$TMP/deps"
for f in "$BORROWED"/*; do
  case "$(basename "$f")" in
    mocolab|mocolab-*|__editable__*mocolab*|_mocolab*) ;;  # the editable install of the source tree
    *) ln -s "$f" "$TMP/deps/" ;;
  esac
done
echo "$TMP/deps" >"$SITE/zz_borrowed_deps.pth"  # after the venv's own site-packages: the wheel comes first
"$TMP/venv/bin/python" -m pip install --quiet --no-index "$WHEEL"
"$TMP/venv/bin/python" -m pip check

cd "$TMP"  # nothing of the repository on the path from here
export MOCOLAB_CACHE=$TMP/cache
M=$TMP/venv/bin/mocolab
"$TMP/venv/bin/python" - "$TMP/venv" <<'EOF'
import sys, mocolab
assert mocolab.__file__.startswith(sys.argv[1]), f"mocolab imported from {mocolab.__file__}, not the wheel"
print(f"mocolab {mocolab.__version__} from {mocolab.__file__}")
EOF

# every preset of the source tree, listed by the installed package
"$M" presets >presets.txt
expected=$(cd "$REPO/src/mocolab/presets" && ls -- *.yaml | sed 's/\.yaml$//' | sort)
diff <(echo "$expected") <(sort presets.txt) || { echo "wheel_check: mocolab presets differs from src/" >&2; exit 1; }

# a tiny labeled folder: real CIFAR-10 JPEGs when ../shared/data has them, else generated images
"$TMP/venv/bin/python" - "$REPO/../shared/data/cifar10" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

src = Path(sys.argv[1])
for split, n in (("train", 32), ("test", 8)):
    for c, cls in enumerate(("airplane", "cat")):
        out = Path("tiny") / split / cls
        out.mkdir(parents=True)
        files = sorted((src / split / cls).glob("*.jpg"))[:n] if (src / split / cls).is_dir() else []
        for i in range(n):
            if files:
                out.joinpath(files[i].name).write_bytes(files[i].read_bytes())
            else:  # 32 x 32 x 3 noise around a class colour
                rgb = np.random.default_rng(i).normal(80 + 90 * c, 40, (32, 32, 3)).clip(0, 255).astype(np.uint8)
                Image.fromarray(rgb).save(out / f"{i}.png")
EOF
"$M" pretrain --preset cifar10_cpu --data tiny --out run --epochs 1 --batch-size 16 \
  moco.queue_size=32 run.compile=false run.threads=2 >pretrain.log 2>&1 || { tail -20 pretrain.log; exit 1; }
"$TMP/venv/bin/python" -c 'import json; s = json.load(open("run/summary.json")); print("pretrain: kNN", s["knn_top1"])'
test -f run/backbone.pth

# the Python API (issue 27) from the wheel
"$TMP/venv/bin/python" -c "import mocolab; mocolab.load('random:cifar10_cpu'); print('mocolab.load: ok')"
echo "wheel_check: ok ($((SECONDS - t0)) s)"
