"""`edgecv eval`: run the exact artifact over the held-out set, the way a device runs it, and judge it.

1. The artifact's bytes are read once and their sha256 and size checked against the manifest; the
   runtime loads those bytes (no second read that could see another file).
2. Every image goes through the device's own code: app.pipeline.preprocess.Preprocessor into a batch,
   the runtime (Triton serving the rendered repository, or onnxruntime), app.pipeline.postprocess's
   decoder named by the manifest, boxes back to image pixels.
3. The gates: per-class precision/recall/F1 (fleet.gates.accuracy), support and Wilson intervals, every
   site on its own (fleet.gates.support), and the model's load time against the 30 s start-up budget.
4. The report binds the verdict to what was judged: the artifact sha256, the evaluation set's digest,
   the tool version and the time. It is written to a temporary folder and renamed into place: a failed
   or interrupted run leaves the previous report as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from app.pipeline.postprocess import decoder_for
from app.pipeline.preprocess import Preprocessor
from fleet.atomic import swap_dir
from fleet.gates import report as gates_report
from fleet.gates.accuracy import AccuracyReport, GatesInputError, evaluate
from fleet.gates.binding import REPORT_KIND
from fleet.gates.cocoeval import Boxes
from fleet.gates.evalset import EvalSet, FrameReader
from fleet.gates.runtime import LOAD_BUDGET_S, RUNTIMES
from fleet.gates.support import SiteResult, class_support, per_site, support_failures
from fleet.spec.base import sha256_bytes
from fleet.spec.manifest import ModelManifest


def tool_version() -> str:
    try:
        return version("edgecv-fleet")
    except PackageNotFoundError:  # running from a source tree without an install
        return "unknown"


def read_artifact(manifest: ModelManifest, manifest_path: Path, root: Path) -> bytes:
    """The artifact's bytes, only if they are the ones the manifest names (bad input otherwise)."""
    art = manifest.artifact
    if not art.is_local:
        raise GatesInputError(f"{manifest_path}: artifact.uri: {art.uri} is not a local file; fetch it first "
                              "(edgecv eval judges bytes it can hash)")
    path = art.local_path(root)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GatesInputError(f"{manifest_path}: artifact.uri: cannot read {path}: {exc.strerror}") from exc
    digest = sha256_bytes(raw)
    if digest != art.sha256 or len(raw) != art.size:
        raise GatesInputError(f"{manifest_path}: artifact.sha256: {path} has sha256 {digest} ({len(raw)} bytes); "
                              f"the manifest says {art.sha256} ({art.size} bytes): not the artifact that was "
                              "reviewed, refusing to judge it")
    return raw


@dataclass
class Predictions:
    boxes: Boxes  # COCO xywh, image = index into the eval set's images
    images: int
    seconds: float  # preprocess + inference + decode over the whole set


def predict(manifest: ModelManifest, evalset: EvalSet, runtime, reader: FrameReader) -> Predictions:
    batch = manifest.triton.max_batch_size
    pre = Preprocessor(manifest.input, batch)
    decode = decoder_for(manifest)
    parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    n = len(evalset.images)
    start = time.perf_counter()
    for first in range(0, n, batch):
        idx = range(first, min(first + batch, n))
        infos = [pre.write(slot, reader.frame(i)) for slot, i in enumerate(idx)]
        dets = decode(runtime(pre.batch(len(infos))), infos)
        for i, d in zip(idx, dets, strict=True):
            parts.append((i, d.boxes, d.scores, d.class_ids))
    seconds = time.perf_counter() - start
    image = np.concatenate([np.full(len(s), i, np.int64) for i, _, s, _ in parts]) if parts else np.zeros(0, np.int64)
    xyxy = np.concatenate([b for _, b, _, _ in parts]).astype(np.float64) if parts else np.zeros((0, 4))
    xywh = np.column_stack([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]]) if len(xyxy) else np.zeros((0, 4))
    score = np.concatenate([s for _, _, s, _ in parts]).astype(np.float64) if parts else np.zeros(0)
    cls = np.concatenate([c for _, _, _, c in parts]).astype(np.int64) if parts else np.zeros(0, np.int64)
    return Predictions(Boxes(image, cls, xywh, score, np.zeros(len(image), bool)), n, seconds)


def coco_results(preds: Predictions, evalset: EvalSet) -> list[dict]:
    """COCO results; a class the ground truth has no category for gets an id above the ground truth's."""
    data = evalset.data
    by_class = {int(k): int(c) for c, k in zip(data.category_ids, data.category_class, strict=True)}
    extra = int(data.category_ids.max(initial=0)) + 1
    ids = data.image_ids
    b = preds.boxes
    return [{"image_id": int(ids[b.image[j]]), "category_id": by_class.get(int(b.cls[j]), extra + int(b.cls[j])),
             "class": data.class_names[b.cls[j]], "bbox": [round(float(v), 2) for v in b.box[j]],
             "score": round(float(b.score[j]), 5)} for j in range(len(b))]


def _fail(acc: AccuracyReport, name: str, why: str) -> None:
    for c in acc.classes:
        if c.name == name:
            c.verdict = "fail"
            c.failures.append(why)


def _ci(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [round(ci[0], 4), round(ci[1], 4)]


def _site_doc(s: SiteResult) -> dict:
    return {
        "site": s.site, "images": s.images, "passed": not s.failures,
        "failed_classes": sorted(s.failures),
        "classes": [{"name": c.name, "gt": c.gt, "tp": c.tp, "fp": c.fp, "fn": c.fn, "precision": c.precision,
                     "recall": c.recall, "f1": c.f1, "recall_ci95": _ci(sup.recall_ci),
                     "precision_ci95": _ci(sup.precision_ci)}
                    for c, sup in zip(s.accuracy.classes, class_support(s.accuracy, 1), strict=True)
                    if c.gt or c.fp],
    }


def judge(manifest: ModelManifest, evalset: EvalSet, preds: Predictions, load_seconds: float,
          runtime: str) -> tuple[AccuracyReport, dict]:
    """The accuracy report (verdicts include support and per-site failures) and the report's extra sections."""
    gates = manifest.gates
    acc = evaluate(manifest, evalset.data, preds.boxes)
    support = class_support(acc, gates.min_support)
    gated = {c.name for c in acc.classes if c.gated}
    sites = per_site(manifest, evalset.data, preds.boxes, evalset.site_of_index(), gated)
    for name, why in support_failures(acc, support, gates.min_support).items():
        _fail(acc, name, why)
    for s in sites:
        for name, misses in s.failures.items():
            _fail(acc, name, f"at site {s.site}: " + "; ".join(misses))
    load_ok = runtime != "triton" or load_seconds <= LOAD_BUDGET_S
    extra = {
        "support": {
            "min_support": gates.min_support,
            "confidence": 0.95,
            "method": "Wilson score interval",
            "classes": {s.name: {"support": s.support, "precision_ci95": _ci(s.precision_ci),
                                 "recall_ci95": _ci(s.recall_ci), "enough": s.enough}
                        for s in support if s.name in gated or s.support},
        },
        "sites": [_site_doc(s) for s in sites],
        "load_time": {
            "runtime": runtime, "seconds": round(load_seconds, 3), "budget_s": LOAD_BUDGET_S,
            "verdict": ("pass" if load_ok else "over budget") if runtime == "triton" else "info (not Triton)",
        },
        "load_passed": load_ok,
    }
    return acc, extra


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def write_atomically(out: Path, files: dict[str, bytes | str], extra_writers=()) -> None:
    """Write every file into a fresh folder beside `out`, then swap it in: never half a report."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data.encode() if isinstance(data, str) else data)
        for write in extra_writers:
            write(tmp)
        os.chmod(tmp, 0o755)
        swap_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass
class EvalOutcome:
    passed: bool
    doc: dict
    acc: AccuracyReport
    images_per_s: float


def run_eval(manifest: ModelManifest, manifest_path: Path, evalset: EvalSet, out: Path, root: Path,
             runtime: str = "triton", now: datetime | None = None) -> EvalOutcome:
    if runtime not in RUNTIMES:
        raise GatesInputError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    raw = read_artifact(manifest, manifest_path, root)
    reader = FrameReader(evalset)
    rt = RUNTIMES[runtime](manifest, raw)
    try:
        preds = predict(manifest, evalset, rt, reader)
    finally:
        rt.close()
    acc, extra = judge(manifest, evalset, preds, rt.load_seconds, runtime)
    rate = preds.images / preds.seconds if preds.seconds > 0 else float("inf")
    doc = gates_report.to_json(manifest, acc, None, {})
    passed = acc.passed and extra.pop("load_passed")
    doc = {
        "kind": REPORT_KIND,
        "model": manifest.ref,
        "passed": passed,
        "artifact": {"uri": manifest.artifact.uri, "sha256": manifest.artifact.sha256, "size": manifest.artifact.size},
        "eval_set": {"ground_truth": _relative(evalset.ground_truth, root), "sha256": evalset.gt_sha256,
                     "images": len(evalset.images), "digest": reader.digest, "sites": evalset.sites},
        "tool": {"name": "edgecv eval", "version": tool_version()},
        "time": (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "runtime": runtime,
        "throughput": {"images": preds.images, "seconds": round(preds.seconds, 3), "images_per_s": round(rate, 1)},
        **extra,
        "accuracy": doc["accuracy"],
    }
    results = coco_results(preds, evalset)
    markdown = gates_report.to_markdown(doc, acc, None) + "\n" + binding_markdown(doc)
    write_atomically(out, {"report.json": json.dumps(doc, indent=1) + "\n", "report.md": markdown,
                           "predictions.json": json.dumps(results, separators=(",", ":"))},
                     [lambda d: gates_report.confusion_png(acc, d / "confusion_matrix.png")])
    return EvalOutcome(passed, doc, acc, rate)


def _fmt_ci(ci: list[float] | None) -> str:
    return "—" if ci is None else f"{ci[0]:.3f} – {ci[1]:.3f}"


def binding_markdown(doc: dict) -> str:
    """What the verdict is bound to, support with intervals, every site, load time."""
    ev, lt = doc["eval_set"], doc["load_time"]
    lines = [
        "### What was judged", "",
        f"- artifact `{doc['artifact']['uri']}` sha256 `{doc['artifact']['sha256']}`",
        f"- evaluation set `{ev['ground_truth']}`: {ev['images']} images, sites {', '.join(ev['sites'])}, "
        f"digest `{ev['digest']}`",
        f"- {doc['tool']['name']} {doc['tool']['version']} on {doc['runtime']}, {doc['time']}; "
        f"{doc['throughput']['images_per_s']} images/s", "",
        f"### Support (gates.min_support {doc['support']['min_support']}; 95 % Wilson intervals)", "",
        "| class | support | precision 95 % CI | recall 95 % CI | enough |",
        "| --- | ---: | --- | --- | --- |",
    ]
    for name, s in doc["support"]["classes"].items():
        lines.append(f"| {name} | {s['support']} | {_fmt_ci(s['precision_ci95'])} | {_fmt_ci(s['recall_ci95'])} | "
                     f"{'yes' if s['enough'] else '**no: too few examples**'} |")
    lines += ["", "### Per site", "", "| site | images | class | GT | precision | recall | F1 | recall 95 % CI |",
              "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    for s in doc["sites"]:
        for c in s["classes"]:
            flag = " **FAIL**" if c["name"] in s["failed_classes"] else ""
            lines.append(f"| {s['site']} | {s['images']} | {c['name']}{flag} | {c['gt']} | {c['precision']:.3f} | "
                         f"{c['recall']:.3f} | {c['f1']:.3f} | {_fmt_ci(c['recall_ci95'])} |")
    lines += ["", f"### Load time: {lt['seconds']:.2f} s in {lt['runtime']} (budget {lt['budget_s']:.0f} s): "
              f"{lt['verdict']}", ""]
    return "\n".join(lines)

