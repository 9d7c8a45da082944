"""What pycocotools does not say: how sure a per-class number is, and whether it holds at every site.

- Support: a gated class with fewer ground-truth boxes than the manifest's `gates.min_support` fails
  closed ("too few examples"): 0.97 recall on 40 boxes is not evidence.
- 95 % Wilson score intervals for precision (TP of TP+FP) and recall (TP of TP+FN), from scipy.
- Per site: the same evaluation on each site's images alone. A class gated overall that has ground truth
  at a site and misses a threshold there fails the gate, and the failure names the site. Sites are not
  held to min_support (a small site would always fail); their intervals show how far to trust them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

from fleet.gates.accuracy import AccuracyReport, Dataset, evaluate
from fleet.gates.cocoeval import Boxes
from fleet.spec.manifest import ModelManifest

CONFIDENCE = 0.95


def wilson(successes: int, trials: int) -> tuple[float, float] | None:
    """The 95 % Wilson score interval of a proportion; None without trials."""
    if trials <= 0:
        return None
    ci = binomtest(successes, trials).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


@dataclass
class ClassSupport:
    name: str
    support: int
    precision_ci: tuple[float, float] | None
    recall_ci: tuple[float, float] | None
    enough: bool


def class_support(acc: AccuracyReport, min_support: int) -> list[ClassSupport]:
    out = []
    for c in acc.classes:
        out.append(ClassSupport(c.name, c.gt, wilson(c.tp, c.tp + c.fp), wilson(c.tp, c.tp + c.fn),
                                c.gt >= min_support))
    return out


def support_failures(acc: AccuracyReport, support: list[ClassSupport], min_support: int) -> dict[str, str]:
    """class -> why it fails on support (gated classes only)."""
    gated = {c.name for c in acc.classes if c.gated}
    return {s.name: f"too few examples: {s.support} ground-truth box(es) < gates.min_support {min_support}"
            for s in support if s.name in gated and not s.enough}


@dataclass
class SiteResult:
    site: str
    images: int
    accuracy: AccuracyReport
    failures: dict[str, list[str]]  # class -> threshold misses at this site


def _subset(boxes: Boxes, keep: np.ndarray) -> Boxes:
    return Boxes(boxes.image[keep], boxes.cls[keep], boxes.box[keep], boxes.score[keep], boxes.crowd[keep])


def per_site(manifest: ModelManifest, data: Dataset, preds: Boxes, site_of_image: np.ndarray,
             gated: set[str]) -> list[SiteResult]:
    """Evaluate each site's images alone; a class gated overall fails at a site where it has ground truth
    and misses a threshold."""
    out = []
    for site in sorted(set(site_of_image.tolist())):
        at = site_of_image == site
        gt = _subset(data.gt, at[data.gt.image])
        sub = Dataset(data.image_ids, data.class_names, data.category_ids, data.category_class, gt)
        acc = evaluate(manifest, sub, _subset(preds, at[preds.image]))
        failures = {c.name: c.failures for c in acc.classes
                    if c.name in gated and c.gt > 0 and c.failures}
        out.append(SiteResult(site, int(at.sum()), acc, failures))
    return out
