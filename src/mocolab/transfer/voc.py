"""PASCAL VOC detection data (VOC2007/2012, BCCD): Annotations/*.xml, JPEGImages/*.jpg and
ImageSets/Main/<split>.txt.

VOC pixel coordinates are 1-based and inclusive; like detectron2 (`bbox[0] -= 1.0;
bbox[1] -= 1.0`) we subtract 1 from xmin/ymin only. A box with xmax <= xmin or ymax <= ymin
in the file is a zero-size annotation (BCCD has two) and is dropped.
Bad input: a broken or missing XML, a missing image -> one warning naming the file, image
dropped; an unknown class (when `classes` is given), a zero-size box -> one warning per file,
object dropped; boxes outside the image are clipped; an image without objects is kept as a
negative. A missing root or split file, or a split with no usable image -> DataError.
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image

from mocolab.data import DataError, why_unreadable
from mocolab.transfer.boxes import DetectionData, make_item, plural, warn_file

COORDS = ("xmin", "ymin", "xmax", "ymax")


def _read_ids(split_file: Path) -> list[str]:
    if not split_file.is_file():
        raise DataError(f"VOC split file not found: {split_file}")
    try:
        lines = split_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        why = "not UTF-8 text" if isinstance(e, UnicodeDecodeError) else (e.strerror or "unreadable")
        raise DataError(f"cannot read VOC split file {split_file} ({why}): it must list one image id a line") from None
    return [line.split()[0] for line in lines if line.strip()]


def _number(text: str | None) -> float:
    return float((text or "").strip())


def _parse(xml: Path):
    """-> (width, height, [(name, [xmin, ymin, xmax, ymax] as in the file, difficult)],
    problems)."""
    root = ET.parse(xml).getroot()
    problems, objects = [], []
    try:
        w, h = int(_number(root.findtext("size/width"))), int(_number(root.findtext("size/height")))
    except ValueError:
        w = h = 0
    n_bad = 0
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        try:
            box = [_number(obj.findtext(f"bndbox/{k}")) for k in COORDS]
        except ValueError:
            box = None
        if not name or box is None:
            n_bad += 1
            continue
        try:
            difficult = bool(int(_number(obj.findtext("difficult") or "0")))
        except ValueError:
            difficult = False
        objects.append((name, box, difficult))
    if n_bad:
        problems.append(f"dropped {plural(n_bad, 'object')} without a name or a numeric bndbox")
    return w, h, objects, problems


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


def load_voc(root: str | Path, split: str, classes: list[str] | None = None) -> DetectionData:
    """`classes`: the class names (pass train's for test); default: the sorted names found."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"VOC folder not found: {root}")
    ids = _read_ids(root / "ImageSets" / "Main" / f"{split}.txt")
    parsed = []  # (image_id, xml, image path, width, height, objects, problems)
    for image_id, name in enumerate(ids, 1):
        xml, img = root / "Annotations" / f"{name}.xml", root / "JPEGImages" / f"{name}.jpg"
        if not xml.is_file():
            warnings.warn(f"skipped {name}: annotation not found: {xml}", stacklevel=2)
            continue
        try:
            w, h, objects, problems = _parse(xml)
        except (ET.ParseError, OSError, UnicodeDecodeError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            warnings.warn(f"skipped {xml}: not a readable VOC XML file ({msg})", stacklevel=2)
            continue
        if not img.is_file():
            warnings.warn(f"skipped {xml}: image not found: {img}", stacklevel=2)
            continue
        if w <= 0 or h <= 0:  # no usable <size>: read it from the image header
            try:
                w, h = _image_size(img)
            except OSError as e:
                warnings.warn(f"skipped unreadable image {img} ({why_unreadable(e)})", stacklevel=2)
                continue
        parsed.append((image_id, xml, img, w, h, objects, problems))
    if classes is None:
        classes = sorted({o[0] for p in parsed for o in p[5]})
        if not classes:
            raise DataError(f"no objects in VOC split {split} of {root}")
    index = {c: i for i, c in enumerate(classes, 1)}
    items = []
    for image_id, xml, img, w, h, objects, problems in parsed:
        boxes, labels, difficult = [], [], []
        unknown, n_zero = set(), 0
        for name, (x1, y1, x2, y2), diff in objects:
            if name not in index:
                unknown.add(name)
            elif x2 <= x1 or y2 <= y1:
                n_zero += 1
            else:
                boxes.append([x1 - 1.0, y1 - 1.0, x2, y2])  # detectron2's 1-based -> 0-based
                labels.append(index[name])
                difficult.append(diff)
        if unknown:
            problems.append(f"dropped objects of unknown class {', '.join(sorted(unknown))} "
                            f"(classes: {', '.join(classes)})")
        if n_zero:
            problems.append(f"dropped {plural(n_zero, 'zero-size box')}")
        items.append(make_item(img, boxes, labels, difficult, w, h, image_id, problems))
        warn_file(xml, problems)
    if not items:
        raise DataError(f"no usable image in VOC split {split} of {root}")
    return DetectionData(classes=list(classes), items=items)
