"""The graph `edgecv triton render` serves when the manifest asks for fused preprocessing or server-side decode.

A wrapper ONNX graph, generated at render time from the manifest and the sha256-checked artifact (which
itself stays untouched in the registry): the artifact's nodes and weights unchanged, with

- in front (`triton.fused_preprocess`): a uint8 input `image_u8` [N, H, W, 3], letterboxed BGR as the app
  writes it into shared memory (4x fewer bytes than float32), then Cast, channel order, NHWC->NCHW and
  (x - mean) / std in the artifact's own dtype, feeding the artifact's input;
- behind (`triton.server_decode`, NanoDet): the head's decode (softmax over the distance bins, expectation,
  times the stride, around the cell centres), class-aware NonMaxSuppression per image, then TopK to a fixed
  `detections` [N, max_det, 6] = x1, y1, x2, y2 (input pixels), score, class; unused rows have class -1.
  The same detections as app.pipeline.postprocess.NanoDetDecoder (tests/fleet/triton/test_fuse.py), except
  that NonMaxSuppression has no pre-NMS top-k: the numpy decoder caps NMS at 1000 candidates per image, which
  only a frame with more than 1000 (cell, class) scores over the threshold would notice.

Where it pays (bench/pipeline.py, same run): on onnxruntime's CPU provider the decode nodes cost ~2.5-3x the
numpy decoder's CPU, so a CPU-only server should leave `server_decode` off; on a GPU they move the work off
the app's one busy core (the app then reads 2.4 KB per image instead of 1.3 MB of head outputs).

Why one graph rather than a Triton ensemble: one model execution per batch (an ensemble adds a scheduling
step and an intermediate tensor per stage), the same file serves the onnxruntime backend on a Jetson and the
python backend here, and TensorRT sees the cast and normalisation next to the first convolution and fuses
them. Every op is standard ONNX (opset >= 13), which onnxruntime runs on CPU and CUDA; ops TensorRT lacks
(NonMaxSuppression on older TensorRT) fall back to CUDA by onnxruntime's own graph partitioning.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fleet.spec.manifest import DETECTIONS_OUTPUT, FUSED_INPUT, ModelManifest, NanoDetDecoder

P = "edgecv/"  # prefix of every name we add, so nothing collides with the artifact's own names
MIN_OPSET = 13
_ONNX_DTYPE = {"FP32": TensorProto.FLOAT, "FP16": TensorProto.FLOAT16}


class FuseError(ValueError):
    """The artifact cannot be wrapped as the manifest asks."""


def needs_fusing(manifest: ModelManifest) -> bool:
    return manifest.triton.fused_preprocess or manifest.triton.server_decode


def fused_model(manifest: ModelManifest, artifact: bytes) -> bytes:
    """The serialized wrapper graph for `manifest` around the artifact's bytes."""
    model = onnx.load_from_string(artifact)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise FuseError(f"{manifest.ref}: artifact uses opset {opset}; fusing needs opset >= {MIN_OPSET}")
    graph = model.graph
    if manifest.triton.fused_preprocess:
        _prepend_preprocess(graph, manifest)
    if manifest.triton.server_decode:
        _append_decode(graph, manifest)
    model.producer_name = "edgecv triton render"
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _const(graph: onnx.GraphProto, name: str, value: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(np.asarray(value), P + name))
    return P + name


def _node(graph: onnx.GraphProto, op: str, inputs: list[str], name: str, outputs: int = 1, **attrs) -> list[str]:
    outs = [f"{P}{name}" if outputs == 1 else f"{P}{name}_{i}" for i in range(outputs)]
    graph.node.append(helper.make_node(op, inputs, outs, name=P + name, **attrs))
    return outs


def _prepend_preprocess(graph: onnx.GraphProto, manifest: ModelManifest) -> None:
    spec = manifest.input
    original = next((i for i in graph.input if i.name == spec.name), None)
    if original is None:
        raise FuseError(f"{manifest.ref}: the artifact has no input '{spec.name}' (has {[i.name for i in graph.input]})")
    if spec.dtype.value not in _ONNX_DTYPE:
        raise FuseError(f"{manifest.ref}: fused preprocessing feeds float inputs, not {spec.dtype}")
    pre = onnx.GraphProto()  # built apart, then put in front of the artifact's nodes (topological order)
    x = _node(pre, "Cast", [FUSED_INPUT], "pre_cast", to=TensorProto.FLOAT)[0]
    if spec.channel_order == "RGB":  # the app writes BGR (OpenCV's order)
        x = _node(pre, "Gather", [x, _const(pre, "rgb", np.array([2, 1, 0], np.int64))], "pre_rgb", axis=3)[0]
    shape = (1, 3, 1, 1) if spec.layout == "NCHW" else (1, 1, 1, 3)
    if spec.layout == "NCHW":
        x = _node(pre, "Transpose", [x], "pre_nchw", perm=[0, 3, 1, 2])[0]
    # x * (1/std) + (-mean/std): the same arithmetic as app.pipeline.preprocess, so results agree to the ulp.
    std, mean = np.asarray(spec.std, np.float32), np.asarray(spec.mean, np.float32)
    x = _node(pre, "Mul", [x, _const(pre, "inv_std", (1.0 / std).reshape(shape))], "pre_scale")[0]
    x = _node(pre, "Add", [x, _const(pre, "shift", (-mean / std).reshape(shape))], "pre_shift")[0]
    pre.node.append(helper.make_node("Cast", [x], [spec.name], name=P + "pre_out", to=_ONNX_DTYPE[spec.dtype.value]))
    nodes = list(pre.node) + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(pre.initializer)
    graph.input.remove(original)
    h, w = spec.height, spec.width
    graph.input.insert(0, helper.make_tensor_value_info(FUSED_INPUT, TensorProto.UINT8, ["batch", h, w, 3]))


def _append_decode(graph: onnx.GraphProto, manifest: ModelManifest) -> None:
    if not isinstance(manifest.decoder, NanoDetDecoder):
        raise FuseError(f"{manifest.ref}: server-side decode is implemented for the nanodet decoder only")
    p = manifest.decoder.params
    bins = p.reg_max + 1
    in_w, in_h = manifest.input.width, manifest.input.height
    outputs = {o.name for o in graph.output}
    missing = [n for n in p.score_outputs + p.box_outputs if n not in outputs]
    if missing:
        raise FuseError(f"{manifest.ref}: the artifact has no outputs {missing}")
    centres, strides = [], []
    for s in p.strides:  # cell (x, y), row-major, centred at ((x + .5) s, (y + .5) s): as NanoDetDecoder
        gw, gh = math.ceil(in_w / s), math.ceil(in_h / s)
        ys, xs = np.mgrid[0:gh, 0:gw]
        centres.append(np.stack([(xs.ravel() + 0.5) * s, (ys.ravel() + 0.5) * s], axis=1))
        strides.append(np.full(gw * gh, s, np.float32))
    ctr = np.concatenate(centres).astype(np.float32)
    n_cells = len(ctr)
    g = graph
    scores = _node(g, "Concat", list(p.score_outputs), "scores", axis=1)[0]  # [N, A, C]
    dist = _node(g, "Concat", list(p.box_outputs), "dist", axis=1)[0]  # [N, A, 4*bins]
    dist = _node(g, "Reshape", [dist, _const(g, "dist_shape", np.array([0, n_cells, 4, bins], np.int64))],
                 "dist4")[0]
    prob = _node(g, "Softmax", [dist], "softmax", axis=3)[0]
    d = _node(g, "MatMul", [prob, _const(g, "bins", np.arange(bins, dtype=np.float32).reshape(bins, 1))],
              "expect")[0]  # [N, A, 4, 1]
    d = _node(g, "Reshape", [d, _const(g, "d_shape", np.array([0, n_cells, 4], np.int64))], "dist_px0")[0]
    d = _node(g, "Mul", [d, _const(g, "strides", np.concatenate(strides).reshape(1, n_cells, 1))], "dist_px")[0]
    # x1, y1, x2, y2 = cx - l, cy - t, cx + r, cy + b
    d = _node(g, "Mul", [d, _const(g, "sides", np.array([-1, -1, 1, 1], np.float32).reshape(1, 1, 4))], "signed")[0]
    boxes = _node(g, "Add", [d, _const(g, "centres", np.concatenate([ctr, ctr], 1).reshape(1, n_cells, 4))],
                  "boxes")[0]  # [N, A, 4]
    scores_t = _node(g, "Transpose", [scores], "scores_t", perm=[0, 2, 1])[0]  # [N, C, A]
    max_det = p.max_detections
    selected = _node(g, "NonMaxSuppression", [
        boxes, scores_t, _const(g, "max_per_class", np.array([max_det], np.int64)),
        _const(g, "iou", np.array([p.nms_iou], np.float32)),
        _const(g, "score_threshold", np.array([p.score_threshold], np.float32)),
    ], "nms")[0]  # [K, 3]: image, class, cell
    sel_score = _node(g, "GatherND", [scores_t, selected], "sel_score")[0]  # [K]
    image_cell = _node(g, "Gather", [selected, _const(g, "image_cell_cols", np.array([0, 2], np.int64))],
                       "image_cell", axis=1)[0]
    sel_box = _node(g, "GatherND", [boxes, image_cell], "sel_box")[0]  # [K, 4]
    cols = [_node(g, "Gather", [selected, _const(g, f"col{i}", np.array(i, np.int64))], f"sel_col{i}", axis=1)[0]
            for i in (0, 1)]
    image, cls = cols
    cls_f = _node(g, "Cast", [cls], "cls_f", to=TensorProto.FLOAT)[0]
    unsq = _const(g, "axis1", np.array([1], np.int64))
    rows = _node(g, "Concat", [sel_box, _node(g, "Unsqueeze", [sel_score, unsq], "score_col")[0],
                               _node(g, "Unsqueeze", [cls_f, unsq], "cls_col")[0]], "rows", axis=1)[0]  # [K, 6]
    # Rank per image: a [N, K] matrix holding each row's score in its own image's line, -1 elsewhere, padded
    # with max_det columns of -1 so TopK always has max_det candidates.
    n = _node(g, "Gather", [_node(g, "Shape", [boxes], "boxes_shape")[0], _const(g, "zero", np.array(0, np.int64))],
              "batch", axis=0)[0]
    images = _node(g, "Range", [_const(g, "r0", np.array(0, np.int64)), n, _const(g, "r1", np.array(1, np.int64))],
                   "images")[0]
    images = _node(g, "Unsqueeze", [images, unsq], "images_col")[0]  # [N, 1]
    mine = _node(g, "Equal", [_node(g, "Unsqueeze", [image, _const(g, "axis0", np.array([0], np.int64))],
                                    "image_row")[0], images], "mine")[0]  # [N, K]
    minus = _const(g, "minus_one", np.array(-1.0, np.float32))
    key = _node(g, "Where", [mine, _node(g, "Unsqueeze", [sel_score, _const(g, "axis0b", np.array([0], np.int64))],
                                         "score_row")[0], minus], "key")[0]
    pad_shape = _node(g, "Concat", [_node(g, "Unsqueeze", [n, _const(g, "axis0c", np.array([0], np.int64))],
                                          "batch1")[0], _const(g, "max_det", np.array([max_det], np.int64))],
                      "pad_shape", axis=0)[0]
    key = _node(g, "Concat", [key, _node(g, "Expand", [minus, pad_shape], "pad_keys")[0]], "keys", axis=1)[0]
    top, idx = _node(g, "TopK", [key, _const(g, "k", np.array([max_det], np.int64))], "topk", outputs=2, axis=1)
    empty = np.array([[0, 0, 0, 0, 0, -1]], np.float32)
    rows = _node(g, "Concat", [rows, _const(g, "empty_rows", np.repeat(empty, max_det, 0))], "rows_padded", axis=0)[0]
    picked = _node(g, "Gather", [rows, idx], "picked", axis=0)[0]  # [N, max_det, 6]
    real = _node(g, "Unsqueeze", [_node(g, "Greater", [top, _const(g, "zero_f", np.array(0.0, np.float32))],
                                        "real0")[0], _const(g, "axis2", np.array([2], np.int64))], "real")[0]
    g.node.append(helper.make_node("Where", [real, picked, _const(g, "empty_row", empty.reshape(1, 1, 6))],
                                   [DETECTIONS_OUTPUT], name=P + "detections"))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(DETECTIONS_OUTPUT, TensorProto.FLOAT, ["batch", max_det, 6]))


def decode_model(manifest: ModelManifest) -> bytes:
    """Only the server-side decode + NMS, with the artifact's head outputs as inputs (for benchmarks and tests:
    the same nodes `fused_model` appends, timed apart from the network)."""
    if not isinstance(manifest.decoder, NanoDetDecoder):
        raise FuseError(f"{manifest.ref}: server-side decode is implemented for the nanodet decoder only")
    p = manifest.decoder.params
    graph = helper.make_graph([], "decode", [], [])
    for o in manifest.outputs:
        if o.name in p.score_outputs + p.box_outputs:
            graph.input.append(helper.make_tensor_value_info(f"head/{o.name}", TensorProto.FLOAT, ["batch", *o.shape]))
            graph.node.append(helper.make_node("Identity", [f"head/{o.name}"], [o.name]))
            graph.output.append(helper.make_tensor_value_info(o.name, TensorProto.FLOAT, ["batch", *o.shape]))
    _append_decode(graph, manifest)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", MIN_OPSET)])
    onnx.checker.check_model(model)
    return model.SerializeToString()
