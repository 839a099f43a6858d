"""COCO detection data: `instances_*.json` -> DetectionData, and DetectionData -> a COCO
ground-truth dict (so that any DetectionData, VOC included, can be scored by pycocotools).

bbox x, y, w, h -> x1, y1, x2, y2; `iscrowd` -> `difficult` (ignored by both metrics); labels
are the categories sorted by id, 1-based. Bad input: an unreadable JSON, or no usable category or
image -> DataError; a missing image, a malformed image entry (ids and sizes must be finite
integers), a file_name that is absolute or leaves the image folder (never read), a duplicate
image id (the first entry is kept) -> a warning, image dropped; zero-size boxes, unknown
categories, malformed annotations (any field not a finite number of the right type) -> one
warning per image, object dropped; an `iscrowd` other than 0/1 (or false/true) is read as 0 with
a warning; boxes outside the image are clipped; images without annotations are kept as
negatives.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from pathlib import Path, PurePosixPath

from mocolab.data import DataError
from mocolab.transfer.boxes import (
    MAX_COORD,
    MAX_ID,
    DetectionData,
    integer,
    is_file,
    make_item,
    number,
    plural,
    warn_file,
)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"COCO annotation file not found: {path}")
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: not a readable COCO JSON file ({msg[:200]})") from None
    ok = isinstance(d, dict) and all(isinstance(d.get(k), list) for k in ("images", "categories"))
    if not ok or not isinstance(d.get("annotations", []), list):
        raise DataError(f"{path}: not a COCO instances file (needs lists 'images', 'categories')")
    return d


def _categories(path: Path, entries: list) -> tuple[dict[int, str], list[str]]:
    """{id: name} of the well-formed entries (an int id, a str name) and the problems."""
    cats, n_bad, n_dup = {}, 0, 0
    for c in entries:
        cid = integer(c.get("id"), lo=-MAX_ID) if isinstance(c, dict) else None
        name = c.get("name") if isinstance(c, dict) else None
        if cid is None or not isinstance(name, str) or not name.strip():
            n_bad += 1
        elif cid in cats:
            n_dup += 1
        else:
            cats[cid] = name
    if not cats:
        raise DataError(f"{path}: no usable 'categories' (each needs an integer id and a name)")
    problems = [f"skipped {plural(n_bad, 'malformed category')}"] * bool(n_bad)
    problems += [f"skipped {plural(n_dup, 'category')} with a duplicate id"] * bool(n_dup)
    return cats, problems


MALFORMED = "malformed (id, width and height must be integers, file_name a string)"
OUTSIDE = "whose file_name is absolute or leaves the image folder (not read)"
DUPLICATE = "with a duplicate id (the first is kept)"


def _image_entry(im) -> tuple[int, str, int, int] | str:
    """(id, file_name, width, height), or why the entry is skipped (MALFORMED, OUTSIDE). The
    file_name is checked as written: a symlink inside the image folder is followed."""
    if not isinstance(im, dict):
        return MALFORMED
    image_id, name = integer(im.get("id"), lo=-MAX_ID), im.get("file_name")
    w, h = (integer(im.get(k), lo=1, hi=int(MAX_COORD)) for k in ("width", "height"))
    if image_id is None or w is None or h is None or not isinstance(name, str) or "\x00" in name:
        return MALFORMED
    if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return OUTSIDE
    return image_id, name, w, h


def _box(a, cats: dict[int, str]) -> tuple[list[float], str] | None:
    """(x, y, w, h as finite numbers, category name or 'id N'), or None when malformed."""
    bbox, cid = a.get("bbox"), integer(a.get("category_id"), lo=-MAX_ID)
    if not isinstance(bbox, list) or len(bbox) != 4 or cid is None:
        return None
    xywh = [number(v) for v in bbox]
    return None if None in xywh else (xywh, cats.get(cid, f"id {cid}"))


def load_coco(annotation_json: str | Path, image_dir: str | Path,
              classes: list[str] | None = None) -> DetectionData:
    """`classes`: names to map the categories onto (pass train's for val); default: the JSON's."""
    path, image_dir = Path(annotation_json), Path(image_dir)
    d = _read_json(path)
    cats, file_problems = _categories(path, d["categories"])
    if classes is None:
        classes = [cats[k] for k in sorted(cats)]
    index = {c: i for i, c in enumerate(classes, 1)}
    by_image, n_bad_anns = defaultdict(list), 0
    for a in d.get("annotations", []):
        image_id = integer(a.get("image_id"), lo=-MAX_ID) if isinstance(a, dict) else None
        if image_id is None:
            n_bad_anns += 1
        else:
            by_image[image_id].append(a)
    items, skipped, seen = [], defaultdict(int), set()
    for im in d["images"]:
        entry = _image_entry(im)
        if isinstance(entry, str):
            skipped[entry] += 1
            continue
        image_id, name, w, h = entry
        if image_id in seen:  # its annotations went to the first entry with this id
            skipped[DUPLICATE] += 1
            continue
        seen.add(image_id)
        img, anns = image_dir / name, by_image.pop(image_id, [])
        if not is_file(img):
            warnings.warn(f"skipped {name[:100]} of {path}: image not found in {image_dir}", stacklevel=2)
            continue
        boxes, labels, difficult, problems = [], [], [], []
        unknown, n_zero, n_bad, n_crowd = set(), 0, 0, 0
        for a in anns:
            box = _box(a, cats)
            if box is None:
                n_bad += 1
                continue
            (x, y, bw, bh), cat = box
            crowd = a.get("iscrowd", 0)
            if crowd not in (0, 1):  # true and false are 1 and 0; "no" is not 0
                n_crowd, crowd = n_crowd + 1, 0
            if cat not in index:
                unknown.add(cat)
            elif bw <= 0 or bh <= 0:
                n_zero += 1
            else:
                boxes.append([x, y, x + bw, y + bh])
                labels.append(index[cat])
                difficult.append(bool(crowd))
        if n_bad:
            problems.append(f"dropped {plural(n_bad, 'malformed annotation')}")
        if n_crowd:
            problems.append(f"read {plural(n_crowd, 'iscrowd value')} other than 0 or 1 as 0")
        if unknown:
            problems.append(f"dropped objects of unknown class {', '.join(sorted(unknown))}")
        if n_zero:
            problems.append(f"dropped {plural(n_zero, 'zero-size box')}")
        items.append(make_item(img, boxes, labels, difficult, w, h, image_id, problems))
        warn_file(f"{path} ({name[:100]})", problems)
    orphans = sum(len(v) for v in by_image.values())
    file_problems += [f"skipped {plural(n, 'image entry')} {why}" for why, n in skipped.items()]
    file_problems += [f"skipped {plural(n_bad_anns, 'annotation')} without an integer image_id"] * bool(n_bad_anns)
    file_problems += [f"skipped {plural(orphans, 'annotation')} of unknown images"] * bool(orphans)
    warn_file(path, file_problems)
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
