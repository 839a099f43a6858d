"""PASCAL VOC detection data (VOC2007/2012, BCCD): Annotations/*.xml, JPEGImages/*.jpg and
ImageSets/Main/<split>.txt.

VOC pixel coordinates are 1-based and inclusive; like detectron2 (`bbox[0] -= 1.0;
bbox[1] -= 1.0`) we subtract 1 from xmin/ymin only. A box with xmax <= xmin or ymax <= ymin
in the file is a zero-size annotation (BCCD has two) and is dropped.
Bad input: a broken or missing XML, a missing image, an image id that is not a plain file name
-> one warning naming the file, image dropped; an unknown class (when `classes` is given), a
zero-size box, a coordinate that is not a finite number (inf, NaN, 1e999, text) -> one warning
per file, object dropped; an unusable <size> is read from the image header and a <difficult>
other than 0 or 1 is read as 0 (one warning per file); boxes outside the image are clipped; an
image without objects is kept as a negative. A missing root or split file, or a split with no usable image -> DataError.
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

from mocolab.data import DataError, open_image, why_unreadable
from mocolab.transfer.boxes import MAX_COORD, DetectionData, is_file, make_item, plural, text_number, warn_file

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


def _short(text: str | None) -> str:
    return repr((text or "").strip()[:20])


def _parse(xml: Path):
    """-> (width, height (0 when <size> is unusable), [(name, [xmin, ymin, xmax, ymax] as in the
    file, difficult)], problems). Every number must be finite (not inf, NaN, 1e999)."""
    root = ET.parse(xml).getroot()
    problems, objects = [], []
    texts = [root.findtext(f"size/{k}") for k in ("width", "height")]
    w, h = (text_number(t, 1, MAX_COORD) for t in texts)
    if w is None or h is None:
        w = h = 0  # read from the image header
        if any((t or "").strip() for t in texts):
            problems.append(f"unusable <size> (width {_short(texts[0])}, height {_short(texts[1])}): "
                            "read from the image")
    n_bad = n_difficult = 0
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        box = [text_number(obj.findtext(f"bndbox/{k}")) for k in COORDS]
        if not name or None in box:
            n_bad += 1
            continue
        text = (obj.findtext("difficult") or "0").strip() or "0"
        difficult = text_number(text)
        if difficult not in (0.0, 1.0):
            n_difficult += 1
        objects.append((name, box, difficult == 1.0))
    if n_bad:
        problems.append(f"dropped {plural(n_bad, 'object')} without a name or a finite numeric bndbox")
    if n_difficult:
        problems.append(f"read {plural(n_difficult, '<difficult> value')} other than 0 or 1 as 0")
    return int(w), int(h), objects, problems


def _image_size(path: Path) -> tuple[int, int]:
    """From the header (within data.check_image_size's bounds)."""
    with open_image(path) as im:
        return im.size


def _plain_name(name: str) -> bool:
    """A split file's image id names a file inside the VOC folder (no separators, not ..)."""
    return name not in (".", "..") and "/" not in name and "\\" not in name and "\x00" not in name


def load_voc(root: str | Path, split: str, classes: list[str] | None = None) -> DetectionData:
    """`classes`: the class names (pass train's for test); default: the sorted names found."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"VOC folder not found: {root}")
    ids = _read_ids(root / "ImageSets" / "Main" / f"{split}.txt")
    parsed = []  # (image_id, xml, image path, width, height, objects, problems)
    for image_id, name in enumerate(ids, 1):
        if not _plain_name(name):
            warnings.warn(f"skipped {name[:100]!r} of {split}.txt: an image id must be a plain file name", stacklevel=2)
            continue
        xml, img = root / "Annotations" / f"{name}.xml", root / "JPEGImages" / f"{name}.jpg"
        if not is_file(xml):
            warnings.warn(f"skipped {name}: annotation not found: {xml}", stacklevel=2)
            continue
        try:
            w, h, objects, problems = _parse(xml)
        except (ET.ParseError, OSError, ValueError, LookupError) as e:  # ValueError: UnicodeDecodeError...
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            warnings.warn(f"skipped {xml}: not a readable VOC XML file ({msg})", stacklevel=2)
            continue
        if not is_file(img):
            warnings.warn(f"skipped {xml}: image not found: {img}", stacklevel=2)
            continue
        if w <= 0 or h <= 0:  # no usable <size>: read it from the image header
            try:
                w, h = _image_size(img)
            except Exception as e:  # unreadable, or over the size bounds (data.ImageTooLarge)
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
