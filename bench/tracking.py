"""Tracking quality and cost: our tracker against the reference ByteTrack (Roboflow's `trackers`), same run.

    .venv/bin/python bench/tracking.py [--quick] [--refresh-detections]

1. Synthetic sequences with exact ground truth (fleet/retrain/synthetic/tracks.py): people who walk, cross,
   occlude each other, stop, leave and come back, seen by a noisy detector (jitter, misses, lost frames,
   false positives, score noise) at 5, 10 and 30 fps. Both trackers get the same detections; HOTA, IDF1,
   MOTA and ID switches per frame rate and over all. Scenes REPORT_SEEDS are held out: the defaults were
   tuned on TUNE_SEEDS only (`--tune` reruns that search; `--tune-set` scores those scenes).
2. vtest.avi (opencv-doc, 795 frames at 10 fps) with real NanoDet-m person detections (cached in
   bench/data/vtest_nanodet.npz; `--refresh-detections` recomputes them with onnxruntime): no ground
   truth, so confirmed ids (fragments), tracked box-frames, and how far each tracker agrees with the other
   (IDF1/HOTA of ours with the reference's ids taken as the truth).
3. CPU per frame at 20 objects (time.process_time over a 20-object scene at 10 fps), ours / reference.

Metrics: `trackers.eval`, the reference package's own evaluation, written for TrackEval parity (HOTA, CLEAR,
Identity) and run here in memory on per-frame arrays. Chosen over TrackEval (works from MOTChallenge files on
disk) and motmetrics (last PyPI release 2022; HOTA needs a hand-built multi-threshold loop): it comes with the
reference anyway, so one dependency instead of two. Goals: IDF1 and HOTA >= the reference's and ID switches <= the reference's on
the synthetic set; on vtest.avi confirmed ids <= the reference's; <= 0.15 ms CPU per frame at 20 objects where
the reference takes 0.23 ms (checked as the ratio, CPU_RATIO_GOAL). Exit status 0 when every goal is met.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app.pipeline.tracker import Tracker, TrackerConfig  # noqa: E402
from app.pipeline.types import Detections  # noqa: E402
from fleet.retrain.synthetic.tracks import DetectorNoise, Sequence, detect, make_scene  # noqa: E402

FPS = (5, 10, 30)
REPORT_SEEDS = (0, 1, 2, 3)
TUNE_SEEDS = (100, 101, 102, 103)
VTEST_CACHE = REPO / "bench" / "data" / "vtest_nanodet.npz"
VTEST_FPS = 10.0
PERSON = 0
# The goal was set as 0.15 ms where the reference took 0.23 ms; a shared machine's absolute times drift, so
# the check is the ratio against the reference measured in the same run.
CPU_RATIO_GOAL = 0.15 / 0.23

Output = list[tuple[np.ndarray, np.ndarray]]  # per frame: confirmed track ids (N,), boxes (N, 4)


def synthetic_set(seeds=REPORT_SEEDS, fps=FPS, seconds: float = 20.0, noise: DetectorNoise | None = None) -> list[Sequence]:
    out = []
    for s in seeds:
        scene = make_scene(s, objects=6 + 2 * (s % 4), seconds=seconds)
        out += [detect(scene, f, noise, seed=s) for f in fps]
    return out


def detections(seq: Sequence) -> list[Detections]:
    return [Detections(b, s, np.zeros(len(s), np.int32)) for b, s in zip(seq.det_boxes, seq.det_scores, strict=True)]


def run_ours(dets: list[Detections], fps: float, config: TrackerConfig | None = None) -> Output:
    trk = Tracker(config)
    out = []
    for k, d in enumerate(dets):
        r = trk.update(d, k / fps)
        ok = r.track_ids >= 0
        out.append((r.track_ids[ok], np.asarray(r.boxes[ok], np.float64)))
    return out


def _sv(d: Detections):
    import supervision as sv

    return sv.Detections(xyxy=np.asarray(d.boxes, np.float64), confidence=np.asarray(d.scores, np.float64),
                         class_id=np.asarray(d.class_ids, int))


def reference_tracker(fps: float):
    from trackers import ByteTrackTracker

    return ByteTrackTracker(frame_rate=fps)  # defaults otherwise, as documented


def run_reference(dets: list[Detections], fps: float) -> Output:
    trk = reference_tracker(fps)
    out = []
    for d in dets:
        r = trk.update(_sv(d))
        ok = r.tracker_id >= 0
        out.append((np.asarray(r.tracker_id[ok], np.int64), np.asarray(r.xyxy[ok], np.float64)))
    return out


def _remap(per_frame: list[np.ndarray]) -> list[np.ndarray]:
    ids = sorted({int(i) for f in per_frame for i in f})
    index = {i: k for k, i in enumerate(ids)}
    return [np.array([index[int(i)] for i in f], np.intp) for f in per_frame]


def score(gt: Output, tracked: Output) -> dict:
    """HOTA, IDF1, MOTA, ID switches and friends of `tracked` against `gt` (both per frame: ids, boxes)."""
    from trackers.eval import box_iou, compute_clear_metrics, compute_hota_metrics, compute_identity_metrics

    gt_ids, trk_ids = _remap([g[0] for g in gt]), _remap([t[0] for t in tracked])
    sim = [box_iou(g[1].reshape(-1, 4), t[1].reshape(-1, 4)) for g, t in zip(gt, tracked, strict=True)]
    return {
        "HOTA": compute_hota_metrics(gt_ids, trk_ids, sim),
        "CLEAR": compute_clear_metrics(gt_ids, trk_ids, sim),
        "Identity": compute_identity_metrics(gt_ids, trk_ids, sim),
        "ids": len({int(i) for t in tracked for i in t[0]}),
    }


def summary(scores: list[dict]) -> dict[str, float]:
    """Metrics over several sequences, aggregated the TrackEval way (sums, then ratios)."""
    from trackers.eval import aggregate_clear_metrics, aggregate_hota_metrics, aggregate_identity_metrics

    hota = aggregate_hota_metrics([s["HOTA"] for s in scores])
    clear = aggregate_clear_metrics([s["CLEAR"] for s in scores])
    ident = aggregate_identity_metrics([s["Identity"] for s in scores])
    return {"HOTA": 100 * float(hota["HOTA"]), "IDF1": 100 * float(ident["IDF1"]), "MOTA": 100 * float(clear["MOTA"]),
            "IDSW": int(clear["IDSW"]), "ids": sum(s["ids"] for s in scores)}


def evaluate_synthetic(seqs: list[Sequence], config: TrackerConfig | None = None, reference: bool = True) -> dict:
    """{fps: {"ours": summary, "reference": summary}} plus "all"."""
    per: dict = {}
    for seq in seqs:
        gt = list(zip(seq.gt_ids, seq.gt_boxes, strict=True))
        row = per.setdefault(seq.fps, {"ours": [], "reference": []})
        dets = detections(seq)
        row["ours"].append(score(gt, run_ours(dets, seq.fps, config)))
        if reference:
            row["reference"].append(score(gt, run_reference(dets, seq.fps)))
    result = {f: {k: summary(v) for k, v in row.items() if v} for f, row in per.items()}
    result["all"] = {k: summary([s for row in per.values() for s in row[k]]) for k in ("ours", "reference")
                     if any(row[k] for row in per.values())}
    return result


# --- tuning (synthetic TUNE_SEEDS only; never vtest.avi) ---------------------------------------------------

# The search starts from these (the first Kalman version's guesses) and tries each key's values in turn.
START = {"match_iou": 0.2, "low_match_iou": 0.3, "new_track_score": 0.6, "max_age_s": 1.0, "duplicate_iou": 0.6,
         "measurement_noise": 0.05, "motion_noise": 1.0, "initial_speed": 1.0, "high_score": 0.5, "min_hits": 2}
GRID = {
    "motion_noise": [0.3, 0.6, 1.0, 2.0, 4.0],
    "measurement_noise": [0.02, 0.05, 0.1],
    "max_age_s": [0.7, 1.0, 1.5, 2.0, 3.0],
    "match_iou": [0.1, 0.15, 0.2, 0.3],
    "low_match_iou": [0.1, 0.2, 0.3, 0.5],
    "new_track_score": [0.55, 0.6, 0.65, 0.7],
    "high_score": [0.45, 0.5, 0.55, 0.6],
    "min_hits": [2, 3],
    "duplicate_iou": [0.4, 0.6, 0.8, 1.0],
    "initial_speed": [0.5, 1.0, 2.0],
}


def tune(rounds: int = 2) -> dict:
    """Coordinate search of TrackerConfig from START over GRID on the tuning scenes; objective HOTA + IDF1 -
    IDSW / 20. How the defaults were chosen (about fifteen minutes on two cores). The objective is flat near
    the optimum (configurations within a point of each other), so a search started elsewhere ends elsewhere
    with about the same score."""
    seqs = synthetic_set(TUNE_SEEDS)
    best = dict(START)

    def objective(cfg: dict) -> tuple[float, dict]:
        m = evaluate_synthetic(seqs, TrackerConfig(**cfg), reference=False)["all"]["ours"]
        return m["HOTA"] + m["IDF1"] - m["IDSW"] / 20, m

    for _ in range(rounds):
        for key, values in GRID.items():
            scored = [(*objective({**best, key: v}), v) for v in values]
            _, m, best[key] = max(scored, key=lambda s: s[0])
            print(f"{key} = {best[key]}: {m}", flush=True)
    return best


# --- vtest.avi with real NanoDet detections --------------------------------------------------------------


def vtest_detections(refresh: bool = False) -> list[Detections]:
    """NanoDet-m person detections of every vtest.avi frame (decoded as the app decodes them), cached."""
    if refresh or not VTEST_CACHE.is_file():
        _compute_vtest_detections()
    data = np.load(VTEST_CACHE)
    frame, boxes, scores = data["frame"], data["boxes"], data["scores"]
    out = []
    for k in range(int(data["frames"])):
        sel = frame == k
        out.append(Detections(boxes[sel], scores[sel], np.zeros(int(sel.sum()), np.int32)))
    return out


def _compute_vtest_detections() -> None:
    import cv2
    import onnxruntime as ort

    from app.pipeline.postprocess import decoder_for
    from app.pipeline.preprocess import Preprocessor
    from fleet.local.rtsp import VTEST
    from fleet.spec.manifest import load_manifest

    manifest = load_manifest(REPO / "models" / "nanodet-m" / "manifest.yaml")
    session = ort.InferenceSession(str(manifest.artifact.local_path(REPO)), providers=["CPUExecutionProvider"])
    names = [o.name for o in manifest.outputs]
    decode = decoder_for(manifest)
    pre = Preprocessor(manifest.input, 1)
    cap = cv2.VideoCapture(str(VTEST))
    frames, boxes, scores = [], [], []
    k = 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        info = pre.write(0, img)
        outputs = session.run(names, {manifest.input.name: pre.batch(1)})
        (d,) = decode(dict(zip(names, outputs, strict=True)), [info])
        person = np.asarray(d.class_ids) == PERSON
        frames += [k] * int(person.sum())
        boxes.append(np.asarray(d.boxes)[person])
        scores.append(np.asarray(d.scores)[person])
        k += 1
    cap.release()
    if k == 0:
        raise SystemExit(f"cannot read {VTEST}")
    VTEST_CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(VTEST_CACHE, frames=k, frame=np.array(frames, np.int32),
                        boxes=np.concatenate(boxes).astype(np.float32), scores=np.concatenate(scores).astype(np.float32),
                        model_sha256=manifest.artifact.sha256)


def evaluate_vtest(dets: list[Detections], config: TrackerConfig | None = None) -> dict:
    ours, ref = run_ours(dets, VTEST_FPS, config), run_reference(dets, VTEST_FPS)
    agree = score(ref, ours)
    return {
        "ours_ids": len({int(i) for ids, _ in ours for i in ids}),
        "ref_ids": len({int(i) for ids, _ in ref for i in ids}),
        "ours_boxes": sum(len(ids) for ids, _ in ours),
        "ref_boxes": sum(len(ids) for ids, _ in ref),
        "agree_IDF1": 100 * float(agree["Identity"]["IDF1"]),
        "agree_HOTA": 100 * float(agree["HOTA"]["HOTA"]),
        "agree_IDSW": int(agree["CLEAR"]["IDSW"]),
    }


# --- cost ------------------------------------------------------------------------------------------------


def cpu_per_frame(seconds: float = 60.0, repeats: int = 3) -> dict[str, float]:
    """CPU ms per frame of each tracker on a 20-object scene at 10 fps (best of `repeats`)."""
    seq = detect(make_scene(7, objects=22, seconds=seconds), 10)
    dets = detections(seq)
    sv_dets = [_sv(d) for d in dets]
    objects = float(np.mean([len(g) for g in seq.gt_ids]))
    per_frame = float(np.mean([len(d) for d in dets]))

    def ours() -> None:
        trk = Tracker()
        for k, d in enumerate(dets):
            trk.update(d, k / 10.0)

    def reference() -> None:
        trk = reference_tracker(10.0)
        for d in sv_dets:
            trk.update(d)

    out = {"objects": objects, "detections": per_frame}
    for name, fn in (("ours", ours), ("reference", reference)):
        best = float("inf")
        for _ in range(repeats):
            t0 = time.process_time()
            fn()
            best = min(best, time.process_time() - t0)
        out[name] = 1000 * best / len(seq)
    return out


def _table(title: str, rows: dict) -> None:
    print(f"\n{title}")
    print(f"{'':>10} {'tracker':>10} {'HOTA':>7} {'IDF1':>7} {'MOTA':>7} {'IDSW':>6} {'ids':>5}")
    for key, row in rows.items():
        label = "all" if key == "all" else f"{key:g} fps"
        for who in ("ours", "reference"):
            if who in row:
                m = row[who]
                print(f"{label:>10} {who:>10} {m['HOTA']:7.2f} {m['IDF1']:7.2f} {m['MOTA']:7.2f} {m['IDSW']:6d} {m['ids']:5d}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two scenes, 10 s each")
    ap.add_argument("--tune-set", action="store_true", help="score the tuning scenes instead of the held-out ones")
    ap.add_argument("--refresh-detections", action="store_true", help="recompute the vtest.avi NanoDet detections")
    ap.add_argument("--tune", action="store_true", help="search the tracker defaults on the tuning scenes, then stop")
    args = ap.parse_args()
    if args.tune:
        print("best:", tune())
        return 0

    seeds = TUNE_SEEDS if args.tune_set else REPORT_SEEDS
    seqs = synthetic_set(seeds[:2] if args.quick else seeds, seconds=10.0 if args.quick else 20.0)
    syn = evaluate_synthetic(seqs)
    _table(f"synthetic ground truth ({len(seqs)} sequences, scenes {list(seeds)})", syn)
    o, r = syn["all"]["ours"], syn["all"]["reference"]
    print(f"ratios ours/reference: HOTA {o['HOTA'] / r['HOTA']:.3f}  IDF1 {o['IDF1'] / r['IDF1']:.3f}  "
          f"IDSW {o['IDSW'] / max(r['IDSW'], 1):.3f}")

    v = evaluate_vtest(vtest_detections(args.refresh_detections))
    print(f"\nvtest.avi, NanoDet-m persons, {VTEST_FPS:g} fps (no ground truth)")
    print(f"  confirmed ids: ours {v['ours_ids']}, reference {v['ref_ids']} (ratio {v['ours_ids'] / v['ref_ids']:.3f})")
    print(f"  tracked box-frames: ours {v['ours_boxes']}, reference {v['ref_boxes']}")
    print(f"  ours scored against the reference's ids: IDF1 {v['agree_IDF1']:.2f}  HOTA {v['agree_HOTA']:.2f}  "
          f"IDSW {v['agree_IDSW']}")

    c = cpu_per_frame(20.0 if args.quick else 60.0)
    print(f"\nCPU per frame, {c['objects']:.1f} objects and {c['detections']:.1f} detections on average: "
          f"ours {c['ours']:.3f} ms, reference {c['reference']:.3f} ms (ratio {c['ours'] / c['reference']:.2f}; goal <= {CPU_RATIO_GOAL:.2f})")
    ok = (o["HOTA"] >= r["HOTA"] and o["IDF1"] >= r["IDF1"] and o["IDSW"] <= r["IDSW"]
          and v["ours_ids"] <= v["ref_ids"] and c["ours"] <= CPU_RATIO_GOAL * c["reference"])
    print("\ngoals:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
