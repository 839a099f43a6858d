"""COCO detection data: `instances_*.json` -> DetectionData, and DetectionData -> a COCO
ground-truth dict (so that any DetectionData, VOC included, can be scored by pycocotools).

bbox x, y, w, h -> x1, y1, x2, y2; `iscrowd` -> `difficult` (ignored by both metrics); labels
are the categories sorted by id, 1-based. Bad input: an unreadable JSON -> DataError; a missing
image -> one warning, image dropped; zero-size boxes, unknown categories, malformed entries ->
one warning per image, object dropped; boxes outside the image are clipped; images without
annotations are kept as negatives.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from pathlib import Path

from mocolab.data import DataError
from mocolab.transfer.boxes import DetectionData, make_item, plural, warn_file


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"COCO annotation file not found: {path}")
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: not a readable COCO JSON file ({msg})") from None
    ok = isinstance(d, dict) and all(isinstance(d.get(k), list) for k in ("images", "categories"))
    if not ok or not isinstance(d.get("annotations", []), list):
        raise DataError(f"{path}: not a COCO instances file (needs lists 'images', 'categories')")
    return d


def load_coco(annotation_json: str | Path, image_dir: str | Path,
              classes: list[str] | None = None) -> DetectionData:
    """`classes`: names to map the categories onto (pass train's for val); default: the JSON's."""
    path, image_dir = Path(annotation_json), Path(image_dir)
    d = _read_json(path)
    try:
        cats = {int(c["id"]): str(c["name"]) for c in d["categories"]}
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{path}: malformed 'categories' (each needs an id and a name)") from None
    if classes is None:
        classes = [cats[k] for k in sorted(cats)]
    index = {c: i for i, c in enumerate(classes, 1)}
    by_image = defaultdict(list)
    for a in d.get("annotations", []):
        by_image[a.get("image_id") if isinstance(a, dict) else None].append(a)
    items, n_bad_images = [], 0
    for im in d["images"]:
        try:
            image_id, name = int(im["id"]), str(im["file_name"])
            w, h = int(im["width"]), int(im["height"])
        except (KeyError, TypeError, ValueError):
            n_bad_images += 1
            continue
        img, anns = image_dir / name, by_image.pop(image_id, [])
        if not img.is_file():
            warnings.warn(f"skipped {name} of {path}: image not found: {img}", stacklevel=2)
            continue
        boxes, labels, difficult, problems = [], [], [], []
        unknown, n_zero, n_bad = set(), 0, 0
        for a in anns:
            try:
                x, y, bw, bh = (float(v) for v in a["bbox"])
                cat = cats.get(int(a["category_id"]), f"id {a['category_id']}")
            except (KeyError, TypeError, ValueError):
                n_bad += 1
                continue
            if cat not in index:
                unknown.add(cat)
            elif bw <= 0 or bh <= 0:
                n_zero += 1
            else:
                boxes.append([x, y, x + bw, y + bh])
                labels.append(index[cat])
                difficult.append(bool(a.get("iscrowd", 0)))
        if n_bad:
            problems.append(f"dropped {plural(n_bad, 'malformed annotation')}")
        if unknown:
            problems.append(f"dropped objects of unknown class {', '.join(sorted(unknown))}")
        if n_zero:
            problems.append(f"dropped {plural(n_zero, 'zero-size box')}")
        items.append(make_item(img, boxes, labels, difficult, w, h, image_id, problems))
        warn_file(f"{path} ({name})", problems)
    orphans = sum(len(v) for v in by_image.values())
    problems = [f"skipped {plural(n_bad_images, 'malformed image entry')}"] * bool(n_bad_images)
    problems += [f"skipped {plural(orphans, 'annotation')} of unknown images"] * bool(orphans)
    warn_file(path, problems)
    if not items:
        raise DataError(f"{path}: no usable image (images looked for in {image_dir})")
    return DetectionData(classes=list(classes), items=items)


def to_coco_gt(data: DetectionData, image_dir: str | Path | None = None) -> dict:
    """A COCO ground-truth dict; file_name is relative to image_dir (default: the file's name).

    `difficult` objects become `iscrowd: 1`, which COCOeval ignores like VOC's difficult.
    Annotation ids start at 1 (COCOeval reads id 0 as "unmatched").
    """
    images, anns = [], []
    for it in data.items:
        name = it.path.relative_to(image_dir) if image_dir is not None else it.path.name
        images.append({"id": it.image_id, "file_name": str(name), "width": it.width,
                       "height": it.height})
        for (x1, y1, x2, y2), label, diff in zip(it.boxes.tolist(), it.labels.tolist(),
                                                 it.difficult.tolist()):
            w, h = x2 - x1, y2 - y1
            anns.append({"id": len(anns) + 1, "image_id": it.image_id, "category_id": label,
                         "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": int(diff)})
    cats = [{"id": i, "name": c} for i, c in enumerate(data.classes, 1)]
    return {"info": {"description": "mocolab DetectionData"}, "images": images,
            "annotations": anns, "categories": cats}
