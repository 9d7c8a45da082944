"""`edgecv eval` throughput on the synthetic-shapes held-out set, and model load time in Triton.

    .venv/bin/python bench/eval.py [--load-times]   # makes the images first if they are missing

Baseline, same run, same images in memory: the bare model (onnxruntime, batches of the manifest's max
batch size, the training code's own tensor conversion, no decoding). `edgecv eval` adds what makes its
verdict mean something: reading and hashing every file, the device's letterbox preprocessing and decoder,
and the evaluation itself; the ratio says what that costs. --load-times loads both bundled models in a
local Triton (rendered repository, explicit load) and prints the seconds against the 30 s budget.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fleet.gates.eval import read_artifact, run_eval
from fleet.gates.evalset import load_eval_set
from fleet.gates.runtime import LOAD_BUDGET_S, TritonRuntime
from fleet.repo import REPO_ROOT
from fleet.spec.manifest import load_manifest

SHAPES = REPO_ROOT / "models/synthetic-shapes/manifest.yaml"
NANODET = REPO_ROOT / "models/nanodet-m/manifest.yaml"


def bare_model(manifest, evalset, n: int) -> float:
    import cv2
    import onnxruntime as ort

    from fleet.retrain.synthetic.train import to_tensor_batch

    frames = [cv2.imread(str(im.path)) for im in evalset.images[:n]]
    session = ort.InferenceSession(read_artifact(manifest, SHAPES, REPO_ROOT), providers=["CPUExecutionProvider"])
    batch = manifest.triton.max_batch_size
    start = time.perf_counter()
    for first in range(0, n, batch):
        session.run(None, {manifest.input.name: to_tensor_batch(frames[first:first + batch])})
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load-times", action="store_true", help="also load both bundled models in Triton")
    args = ap.parse_args()
    m = load_manifest(SHAPES)
    if not (SHAPES.parent / "eval/images").is_dir():  # generated, not committed: make them (and check them)
        subprocess.run([sys.executable, str(SHAPES.parent / "make_eval.py"), "--check"], check=True)
    evalset = load_eval_set(SHAPES.parent / "eval/ground_truth.json", m.classes)
    n = len(evalset.images)
    base = bare_model(m, evalset, n)
    with tempfile.TemporaryDirectory() as tmp:
        outcome = run_eval(m, SHAPES, evalset, Path(tmp) / "report", REPO_ROOT, "onnxruntime")
    ours = outcome.images_per_s
    print(f"{n} images: edgecv eval (hash + device preprocessing + decode + gates) {ours:.1f} images/s; "
          f"bare model {base:.1f} images/s; ratio {ours / base:.2f}")
    if args.load_times:
        for path in (SHAPES, NANODET):
            mm = load_manifest(path)
            rt = TritonRuntime(mm, read_artifact(mm, path, REPO_ROOT))
            try:
                x = np.zeros((1, *mm.input.shape), mm.input.dtype.numpy)
                rt(x)
            finally:
                rt.close()
            print(f"{mm.ref}: loaded in Triton in {rt.load_seconds:.2f} s (budget {LOAD_BUDGET_S:.0f} s, "
                  f"ratio {rt.load_seconds / LOAD_BUDGET_S:.3f})")


if __name__ == "__main__":
    main()
