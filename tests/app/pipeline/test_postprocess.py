"""Decoders and NMS: against brute-force references, and the real NanoDet on real frames of vtest.avi."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.pipeline.postprocess import BoxesScoresClassesDecoder, NanoDetDecoder, box_iou, decoder_for, nms
from app.pipeline.preprocess import Preprocessor, letterbox_geometry
from fleet.demo import sample_frames
from fleet.repo import REPO_ROOT
from fleet.spec.manifest import BoxesScoresClassesParams, load_manifest

PERSON = 0


# ---------------------------------------------------------------- brute-force references (plain Python loops)


def iou_ref(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def nms_ref(boxes, scores, thr, groups) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    keep: list[int] = []
    for i in order:
        if all(groups[k] != groups[i] or iou_ref(boxes[i], boxes[k]) <= thr for k in keep):
            keep.append(i)
    return keep


def nanodet_ref(outputs, params, size, num_classes, thr, iou):
    """Decode one image cell by cell with math.exp, then the reference NMS; (box, score, class) tuples."""
    cands = []
    for s, sname, bname in zip(params.strides, params.score_outputs, params.box_outputs, strict=True):
        gw = math.ceil(size / s)
        scores, dist = outputs[sname][0], outputs[bname][0]
        for idx in range(scores.shape[0]):
            y, x = divmod(idx, gw)
            cx, cy = (x + 0.5) * s, (y + 0.5) * s
            sides = []
            for side in range(4):
                logits = dist[idx, side * 11 : (side + 1) * 11]
                m = max(logits)
                e = [math.exp(v - m) for v in logits]
                sides.append(sum(k * v for k, v in enumerate(e)) / sum(e) * s)
            box = (cx - sides[0], cy - sides[1], cx + sides[2], cy + sides[3])
            for c in range(num_classes):
                if scores[idx, c] > thr:
                    cands.append((box, float(scores[idx, c]), c))
    keep = nms_ref([c[0] for c in cands], [c[1] for c in cands], iou, [c[2] for c in cands])
    return [cands[i] for i in keep]


# ---------------------------------------------------------------- NMS


def random_boxes(rng, n, classes=3):
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(5, 80, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.permutation(n).astype(np.float64) / n + 0.01  # distinct: no tie-break ambiguity
    return boxes, scores, rng.integers(0, classes, n)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 60), thr=st.sampled_from([0.3, 0.5, 0.7]))
def test_nms_matches_brute_force(seed, n, thr):
    boxes, scores, classes = random_boxes(np.random.default_rng(seed), n)
    keep = nms(boxes, scores, thr, groups=classes)
    assert keep.tolist() == nms_ref(boxes.tolist(), scores.tolist(), thr, classes.tolist())


def test_nms_is_class_aware():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5, groups=np.array([0, 1, 0])).tolist() == [0, 1]
    assert nms(boxes, scores, 0.5).tolist() == [0]  # without groups one box wins
    assert nms(boxes, scores, 0.5, max_keep=1, groups=np.array([0, 1, 2])).tolist() == [0]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_box_iou_matches_reference():
    rng = np.random.default_rng(3)
    boxes, _, _ = random_boxes(rng, 30)
    got = box_iou(boxes[0], boxes)
    np.testing.assert_allclose(got, [iou_ref(boxes[0], b) for b in boxes], rtol=1e-9)
    assert got[0] == pytest.approx(1.0)


# ---------------------------------------------------------------- the real model on real frames


@pytest.fixture(scope="module")
def manifest():
    return load_manifest(REPO_ROOT / "models" / "nanodet-m" / "manifest.yaml")


@pytest.fixture(scope="module")
def session(manifest):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(manifest.artifact.local_path(REPO_ROOT)), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def frames():
    return sample_frames([0, 100, 199])


def run_model(manifest, session, frames):
    pre = Preprocessor(manifest.input, len(frames))
    infos = [pre.write(i, f) for i, f in enumerate(frames)]
    names = [o.name for o in manifest.outputs]
    outputs = dict(zip(names, session.run(names, {manifest.input.name: pre.batch(len(frames))}), strict=True))
    return outputs, infos


def test_manifest_outputs_are_the_onnx_outputs(manifest, session):
    onnx_out = {o.name: o.shape[1:] for o in session.get_outputs()}
    assert onnx_out == {o.name: o.shape for o in manifest.outputs}
    assert session.get_inputs()[0].name == manifest.input.name
    assert session.get_inputs()[0].shape[1:] == manifest.input.shape


def test_nanodet_decoder_matches_the_cell_by_cell_reference(manifest, session, frames):
    outputs, infos = run_model(manifest, session, frames[:1])
    p = manifest.decoder.params
    dets = decoder_for(manifest)(outputs, infos)[0]
    ref = nanodet_ref(outputs, p, 416, len(manifest.classes), p.score_threshold, p.nms_iou)
    assert len(dets) == len(ref) > 0
    from app.pipeline.preprocess import unletterbox

    ref_boxes = unletterbox(np.array([r[0] for r in ref]), infos[0])
    np.testing.assert_allclose(dets.boxes, ref_boxes, atol=1e-2)
    np.testing.assert_allclose(dets.scores, [r[1] for r in ref], rtol=1e-6)
    assert dets.class_ids.tolist() == [r[2] for r in ref]


def test_people_in_vtest_are_found_with_sensible_boxes(manifest, session, frames):
    outputs, infos = run_model(manifest, session, frames)
    for frame, dets in zip(frames, decoder_for(manifest)(outputs, infos), strict=True):
        h, w = frame.shape[:2]
        people = dets.take(np.flatnonzero((dets.class_ids == PERSON) & (dets.scores >= 0.5)))
        assert len(people) >= 3, f"only {len(people)} confident people"
        bw = people.boxes[:, 2] - people.boxes[:, 0]
        bh = people.boxes[:, 3] - people.boxes[:, 1]
        assert np.all((bh / bw > 1.4) & (bh / bw < 5)), "pedestrians are upright boxes"
        assert np.all((bh > 25) & (bh < 200)), "pedestrian heights in vtest.avi are 30..150 px"
        assert people.boxes.min() >= 0 and np.all(people.boxes[:, 2] <= w) and np.all(people.boxes[:, 3] <= h)
        assert np.all(np.diff(dets.scores) <= 0), "detections come by descending score"


def _mirror_offsets(manifest, session, frames, centre_shift: float) -> np.ndarray:
    """Centre-x offsets between people found in frames and (mirrored back) in their mirror images."""
    outputs, infos = run_model(manifest, session, [*frames, *[f[:, ::-1].copy() for f in frames]])
    dec = decoder_for(manifest)
    dec.centres = dec.centres + dec.strides[:, None] * centre_shift
    dets = dec(outputs, infos)
    offsets = []
    for k, frame in enumerate(frames):
        a, b = dets[k], dets[k + len(frames)]
        mirrored = b.boxes[b.class_ids == PERSON].copy()
        mirrored[:, [0, 2]] = frame.shape[1] - mirrored[:, [2, 0]]
        for i in np.flatnonzero((a.class_ids == PERSON) & (a.scores >= 0.5)):
            iou = box_iou(a.boxes[i], mirrored)
            if len(iou) and iou.max() > 0.3:
                m = mirrored[int(np.argmax(iou))]
                offsets.append((a.boxes[i, 0] + a.boxes[i, 2] - m[0] - m[2]) / 2)
    return np.array(offsets)


def test_cell_centre_convention_is_x_plus_half_times_stride(manifest, session, frames):
    """A wrong cell centre shifts every box the same way; mirroring the frame turns that into a gap."""
    right = _mirror_offsets(manifest, session, frames, 0.0)
    wrong = _mirror_offsets(manifest, session, frames, -0.5)  # centre at x * stride
    assert len(right) >= 8
    assert abs(right.mean()) < 2.0, f"mirrored boxes are off by {right.mean():.1f} px on average"
    assert abs(wrong.mean()) > 5.0  # the check can tell the conventions apart


def test_decoder_refuses_outputs_that_do_not_fit(manifest):
    dec = decoder_for(manifest)
    assert isinstance(dec, NanoDetDecoder)
    info = letterbox_geometry(768, 576, 416, 416)
    good = {o.name: np.zeros((1, *o.shape), np.float32) for o in manifest.outputs}
    assert len(dec(good, [info])[0]) == 0
    with pytest.raises(ValueError, match="Identity_3:0"):
        dec({**good, "Identity_3:0": np.zeros((1, 2704, 40), np.float32)}, [info])
    with pytest.raises(KeyError, match="Identity:0"):
        dec({k: v for k, v in good.items() if k != "Identity:0"}, [info])
    with pytest.raises(ValueError, match="2 frames were sent"):
        dec(good, [info, info])


def test_nanodet_batch_decode_equals_single_image_decode(manifest, session, frames):
    outputs, infos = run_model(manifest, session, frames)
    batch = decoder_for(manifest)(outputs, infos)
    for k in range(len(frames)):
        one = decoder_for(manifest)({n: v[k : k + 1] for n, v in outputs.items()}, infos[k : k + 1])[0]
        np.testing.assert_array_equal(batch[k].boxes, one.boxes)
        np.testing.assert_array_equal(batch[k].class_ids, one.class_ids)


def test_max_detections_caps_each_image(manifest, session, frames):
    outputs, infos = run_model(manifest, session, frames)
    params = manifest.decoder.params.model_copy(update={"max_detections": 2, "score_threshold": 0.2})
    dets = NanoDetDecoder(params, 416, 416, 80)(outputs, infos)
    assert [len(d) for d in dets] == [2, 2, 2]


# ---------------------------------------------------------------- boxes_scores_classes


def test_boxes_scores_classes_formats_threshold_and_frame_coordinates():
    info = letterbox_geometry(832, 416, 416, 416)  # scale 0.5, pad_y 104
    cxcywh = np.array([[[0.5, 0.5, 0.25, 0.25], [0.1, 0.1, 0.1, 0.1], [0.5, 0.5, 0.24, 0.24]]], np.float32)
    outputs = {
        "boxes": cxcywh,
        "scores": np.array([[0.9, 0.2, 0.8]], np.float32),
        "classes": np.array([[1.0, 0.0, 1.0]], np.float32),
    }
    params = BoxesScoresClassesParams(
        boxes_output="boxes", scores_output="scores", classes_output="classes",
        box_format="cxcywh", normalized=True, score_threshold=0.3, nms_iou=0.5,
    )
    dets = BoxesScoresClassesDecoder(params, 416, 416, 2)(outputs, [info])[0]
    # The second box is under the threshold, the third overlaps the first (same class): one box left.
    assert len(dets) == 1 and dets.class_ids.tolist() == [1] and dets.scores[0] == pytest.approx(0.9)
    # input (156, 156, 260, 260) -> frame: minus pad (0, 104), divided by 0.5
    np.testing.assert_allclose(dets.boxes[0], [312, 104, 520, 312], atol=1e-3)

    no_nms = BoxesScoresClassesDecoder(params.model_copy(update={"nms_iou": None}), 416, 416, 2)
    assert len(no_nms(outputs, [info])[0]) == 2
    xywh = params.model_copy(update={"box_format": "xywh", "normalized": False})
    box = BoxesScoresClassesDecoder(xywh, 416, 416, 2).to_xyxy(np.array([[10, 20, 30, 40]], np.float32))
    np.testing.assert_allclose(box, [[10, 20, 40, 60]])


def test_boxes_scores_classes_refuses_unknown_class_ids_and_shape_mismatch():
    params = BoxesScoresClassesParams(boxes_output="b", scores_output="s", classes_output="c")
    dec = BoxesScoresClassesDecoder(params, 416, 416, 2)
    info = letterbox_geometry(416, 416, 416, 416)
    with pytest.raises(ValueError, match="class ids outside"):
        dec({"b": np.zeros((1, 1, 4)), "s": np.ones((1, 1)), "c": np.full((1, 1), 5)}, [info])
    with pytest.raises(ValueError, match="outputs disagree"):
        dec({"b": np.zeros((1, 2, 4)), "s": np.ones((1, 1)), "c": np.zeros((1, 1))}, [info])


def test_fixed_detections_drop_padding_rows_and_are_unletterboxed():
    from app.pipeline.postprocess import FixedDetectionsDecoder
    from app.pipeline.preprocess import letterbox_geometry

    dec = FixedDetectionsDecoder(num_classes=3, max_detections=4)
    rows = np.zeros((2, 4, 6), np.float32)
    rows[..., 5] = -1
    rows[0, 0] = [10, 60, 110, 160, 0.9, 2]
    rows[0, 1] = [0, 52, 20, 80, 0.5, 0]
    info = letterbox_geometry(768, 576, 416, 416)  # scale 416/768, bars of 52 px top and bottom
    a, b = dec({"detections": rows}, [info, info])
    assert len(a) == 2 and len(b) == 0
    assert a.class_ids.tolist() == [2, 0] and a.scores.tolist() == pytest.approx([0.9, 0.5])
    np.testing.assert_allclose(a.boxes[0], [10 / info.scale, 8 / info.scale, 110 / info.scale, 108 / info.scale],
                               rtol=1e-5)
    with pytest.raises(ValueError, match=r"expected \(2, 4, 6\)"):
        dec({"detections": rows[:, :3]}, [info, info])
    rows[1, 0] = [0, 0, 1, 1, 0.9, 7]
    with pytest.raises(ValueError, match="class ids outside"):
        dec({"detections": rows}, [info, info])
    with pytest.raises(KeyError, match="detections"):
        dec({"other": rows}, [info])
