"""Write this model's held-out evaluation set: 1,300 base scenes from two sites, COCO ground truth + PNGs.

    .venv/bin/python models/synthetic-shapes/make_eval.py           # eval/ground_truth.json + eval/images/
    .venv/bin/python models/synthetic-shapes/make_eval.py --check   # images only; the committed ground truth must match

The scenes are procedural and seeded, so the ~50 MB of noisy PNGs are made again on demand instead of
living in Git; the committed ground truth pins what they contain, and `edgecv eval` records the digest of
the images it read. 1,300 scenes give every class more than the default gates.min_support of 1,000 boxes.
Sites: odd image ids were "taken" at depot_north, even ones at yard_south (the example inventory's sites).
"""

import argparse
import json
import sys
from pathlib import Path

import cv2

from fleet.retrain.synthetic.scenes import SceneStyle, make_dataset

HERE = Path(__file__).parent
SCENES, SEED = 1300, 4242
SITES = ("yard_south", "depot_north")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="write the images; fail if the ground truth differs")
    args = ap.parse_args()
    images, gt = make_dataset(SCENES, seed=SEED, style=SceneStyle.base())
    for im in gt["images"]:
        im["site"] = SITES[im["id"] % 2]
    text = json.dumps(gt, separators=(",", ":"))
    target = HERE / "eval" / "ground_truth.json"
    if args.check and target.read_text() != text:
        print(f"{target} differs from the scenes this script makes (seed {SEED}): regenerate and review", file=sys.stderr)
        return 1
    out = HERE / "eval" / "images"
    out.mkdir(parents=True, exist_ok=True)
    for im, img in zip(gt["images"], images, strict=True):
        cv2.imwrite(str(out / im["file_name"]), img)
    if not args.check:
        target.write_text(text)
    print(f"{len(images)} images in {out}, {len(gt['annotations'])} boxes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
