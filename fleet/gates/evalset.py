"""A held-out evaluation set on disk: COCO ground truth whose images are files beside it, each with a site.

    eval/ground_truth.json   COCO dataset; images[i].file_name relative to the images folder,
                             images[i].site (optional) the site the image was taken at
    eval/images/             the images

The digest names the set exactly: sha256 over the ground-truth file and, in image-id order, each image's
file name and the sha256 of its bytes. Two reports with the same digest judged the same pixels and labels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fleet.gates.accuracy import Dataset, GatesInputError, _read_json, dataset_from_coco

NO_SITE = "(no site)"


@dataclass
class EvalImage:
    id: int
    path: Path
    site: str


@dataclass
class EvalSet:
    ground_truth: Path
    images_dir: Path
    data: Dataset
    images: list[EvalImage]  # in data.image_ids order (sorted ids)
    gt_sha256: str

    @property
    def sites(self) -> list[str]:
        return sorted({im.site for im in self.images})

    def site_of_index(self) -> np.ndarray:
        """The site name of every image index (the Boxes.image numbering)."""
        return np.array([im.site for im in self.images], dtype=object)


def load_eval_set(ground_truth: Path, classes: list[str], images_dir: Path | None = None) -> EvalSet:
    """Validate the ground truth against the model's classes and find every image (all missing ones named)."""
    ground_truth = Path(ground_truth)
    images_dir = Path(images_dir) if images_dir else ground_truth.parent / "images"
    raw = _read_json(ground_truth, "ground truth")
    data = dataset_from_coco(raw, classes, str(ground_truth))
    by_id: dict[int, tuple[int, dict]] = {im["id"]: (i, im) for i, im in enumerate(raw["images"])}
    images, missing = [], []
    for image_id in data.image_ids.tolist():
        i, im = by_id[image_id]
        name, site = im.get("file_name"), im.get("site", NO_SITE)
        if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise GatesInputError(f"{ground_truth}: images[{i}].file_name: a relative path inside {images_dir} "
                                  f"is needed, got {name!r}")
        if not isinstance(site, str) or not site:
            raise GatesInputError(f"{ground_truth}: images[{i}].site: a site name (string) is needed, got {site!r}")
        path = images_dir / name
        if not path.is_file():
            missing.append(f"images[{i}].file_name {name}")
        images.append(EvalImage(image_id, path, site))
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise GatesInputError(f"{ground_truth}: {len(missing)} image(s) not found in {images_dir}: "
                              f"{', '.join(missing[:3])}{more}")
    gt_sha256 = hashlib.sha256(ground_truth.read_bytes()).hexdigest()
    return EvalSet(ground_truth, images_dir, data, images, gt_sha256)


class FrameReader:
    """Reads each image once: the bytes hashed into the set's digest are the bytes decoded (no second read
    that could see another file). `digest` is complete once every image was read, in order."""

    def __init__(self, evalset: EvalSet):
        self.evalset = evalset
        self._h = hashlib.sha256(bytes.fromhex(evalset.gt_sha256))
        self._read = 0

    def frame(self, index: int) -> np.ndarray:
        """The image as the device sees a frame: BGR uint8 HxWx3."""
        if index != self._read:
            raise RuntimeError("images are read once, in order")
        im = self.evalset.images[index]
        raw = im.path.read_bytes()
        self._h.update(f"\n{im.path.name}\0".encode())
        self._h.update(hashlib.sha256(raw).digest())
        self._read += 1
        frame = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
        if frame is None:
            raise GatesInputError(f"{self.evalset.ground_truth}: image id {im.id}: {im.path} is not a readable image")
        return frame

    @property
    def digest(self) -> str:
        if self._read != len(self.evalset.images):
            raise RuntimeError("the digest covers every image: read them all first")
        return self._h.hexdigest()
