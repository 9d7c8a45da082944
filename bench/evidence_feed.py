"""What evidence, drift and review sampling cost the pipeline loop per frame.

Baseline, measured in the same run: the loop JPEG-encoding each frame into the pre-roll ring itself
(EvidencePackager.add_frame inline). Ours: the loop hands the frame to app.evidence.feed.EvidenceFeeder
(a queue put; the encode runs on the feeder thread), plus DriftMonitor.observe_frame and
ReviewSampler.reason on the frame's detections.

    .venv/bin/python -m bench.evidence_feed [--frames 300]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import numpy as np

from app.drift.monitors import DriftMonitor
from app.drift.sampling import ReviewSampler
from app.evidence.feed import EvidenceFeeder
from app.evidence.packager import EvidenceConfig, EvidencePackager
from app.pipeline.types import Detections, Frame
from fleet.demo import sample_frames
from fleet.spec.manifest import ConfidenceHistogram


def _detections(rng: np.random.Generator, n: int = 8) -> Detections:
    xy = rng.uniform(0, 600, (n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + 60], axis=1)
    return Detections(boxes, rng.uniform(0.35, 0.95, n).astype(np.float32), rng.integers(0, 3, n).astype(np.int32))


@click.command()
@click.option("--frames", default=300, show_default=True)
def main(frames: int) -> None:
    images = sample_frames(range(0, 40, 4))  # 768x576 vtest.avi frames
    rng = np.random.default_rng(0)
    dets = [_detections(rng) for _ in range(frames)]
    reference = ConfidenceHistogram(edges=[i / 20 for i in range(21)], counts=[1] * 20)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = EvidenceConfig(dir=Path(tmp) / "a", pre_roll_s=2, post_roll_s=2)
        inline = EvidencePackager(cfg, ["a", "b", "c"])
        t0 = time.perf_counter()
        for i in range(frames):
            inline.add_frame("cam", i * 0.1, i, images[i % len(images)], dets[i])
        baseline = (time.perf_counter() - t0) / frames
        inline.close()

        feeder = EvidenceFeeder(EvidencePackager(cfg.model_copy(update={"dir": Path(tmp) / "b"}), ["a", "b", "c"]),
                                maxsize=frames + 1)
        drift, sampler = DriftMonitor(reference, 3), ReviewSampler(seed=0)
        t0 = time.perf_counter()
        for i in range(frames):
            feeder.add(Frame("cam", i, i * 0.1, images[i % len(images)]), dets[i])
            drift.observe_frame(dets[i].scores, dets[i].class_ids)
            sampler.reason(dets[i].scores, drift.alarming)
        ours = (time.perf_counter() - t0) / frames
        feeder.start()
        t1 = time.perf_counter()
        feeder.close()
        drained = (time.perf_counter() - t1) / frames
    print(f"loop-side cost per frame ({frames} frames 768x576, 8 detections each):")
    print(f"  baseline, inline JPEG into the ring: {baseline * 1e3:.3f} ms")
    print(f"  ours, feed hand-off + drift + sampler: {ours * 1e3:.3f} ms")
    print(f"  ratio baseline/ours: {baseline / ours:.1f}x  (feeder thread's own cost: {drained * 1e3:.3f} ms/frame)")


if __name__ == "__main__":
    main()
