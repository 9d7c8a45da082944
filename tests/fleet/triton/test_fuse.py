"""The wrapper graph render generates: uint8 in and/or fixed-size detections out give today's detections."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.pipeline.postprocess import decoder_for
from app.pipeline.preprocess import Preprocessor
from fleet.repo import REPO_ROOT
from fleet.spec.manifest import DETECTIONS_OUTPUT, FUSED_INPUT
from fleet.triton.fuse import FuseError, fused_model
from tests.support.triton_fixtures import serving

ARTIFACT = REPO_ROOT / "models" / "nanodet-m" / "nanodet-m.onnx"


@pytest.fixture(scope="module")
def artifact() -> bytes:
    return ARTIFACT.read_bytes()


@pytest.fixture(scope="module")
def today(nanodet_manifest, artifact, sample_frames):
    """Today's path: float32 preprocessing in the app, the artifact, the numpy decoder."""
    m = nanodet_manifest
    pre = Preprocessor(m.input, len(sample_frames))
    infos = [pre.write(i, f) for i, f in enumerate(sample_frames)]
    session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    names = [o.name for o in m.outputs]
    raw = dict(zip(names, session.run(names, {m.input.name: pre.batch(len(sample_frames))}), strict=True))
    return infos, raw, decoder_for(m)(raw, infos)


def run_fused(manifest, artifact: bytes, frames) -> tuple[list, dict]:
    pre = Preprocessor(manifest.served_input, len(frames))
    infos = [pre.write(i, f) for i, f in enumerate(frames)]
    session = ort.InferenceSession(fused_model(manifest, artifact), providers=["CPUExecutionProvider"])
    names = [o.name for o in manifest.served_outputs]
    feed = {manifest.served_input.name: pre.batch(len(frames))}
    return infos, dict(zip(names, session.run(names, feed), strict=True))


def assert_same_detections(got, want):
    assert [len(d) for d in got] == [len(d) for d in want]
    assert sum(len(d) for d in want) > 20  # the frames have people in them: the comparison is not vacuous
    for g, w in zip(got, want, strict=True):
        # Same order (by score) up to ties; compare sorted by score, then by box.
        gi = np.lexsort((g.boxes[:, 0], -g.scores))
        wi = np.lexsort((w.boxes[:, 0], -w.scores))
        np.testing.assert_array_equal(g.class_ids[gi], w.class_ids[wi])
        np.testing.assert_allclose(g.scores[gi], w.scores[wi], atol=1e-4)
        np.testing.assert_allclose(g.boxes[gi], w.boxes[wi], atol=0.05)


def test_fused_uint8_preprocessing_gives_todays_outputs(nanodet_manifest, artifact, sample_frames, today):
    m = serving(nanodet_manifest, fused_preprocess=True)
    assert m.served_input.dtype.value == "UINT8" and m.served_input.shape == [416, 416, 3]
    infos, raw = run_fused(m, artifact, sample_frames)
    want_infos, want_raw, want = today
    assert infos == want_infos
    for name, arr in want_raw.items():
        np.testing.assert_allclose(raw[name], arr, atol=1e-4)
    assert_same_detections(decoder_for(m)(raw, infos), want)


def test_server_side_decode_gives_the_numpy_decoders_detections(nanodet_manifest, artifact, sample_frames, today):
    m = serving(nanodet_manifest, fused_preprocess=True, server_decode=True)
    infos, raw = run_fused(m, artifact, sample_frames)
    assert list(raw) == [DETECTIONS_OUTPUT]
    assert raw[DETECTIONS_OUTPUT].shape == (len(sample_frames), m.decoder.params.max_detections, 6)
    assert_same_detections(decoder_for(m)(raw, infos), today[2])


def test_server_decode_alone_keeps_the_float_input(nanodet_manifest, artifact, sample_frames, today):
    m = serving(nanodet_manifest, server_decode=True)
    assert m.served_input == m.input
    infos, raw = run_fused(m, artifact, sample_frames)
    assert_same_detections(decoder_for(m)(raw, infos), today[2])


def test_rows_beyond_max_detections_are_cut_and_the_rest_padded(nanodet_manifest, artifact, sample_frames, today):
    params = nanodet_manifest.decoder.params.model_copy(update={"max_detections": 3})
    m = serving(nanodet_manifest, server_decode=True, fused_preprocess=True).model_copy(
        update={"decoder": nanodet_manifest.decoder.model_copy(update={"params": params})})
    _, raw = run_fused(m, artifact, sample_frames[:1] * 2)
    det = raw[DETECTIONS_OUTPUT]
    assert det.shape == (2, 3, 6)
    np.testing.assert_allclose(det[:, :, 4], np.repeat(today[2][0].scores[None, :3], 2, 0), atol=1e-4)
    # A black frame has no detections: every row is padding (class -1, score 0).
    _, raw = run_fused(m, artifact, [np.zeros((576, 768, 3), np.uint8)])
    np.testing.assert_array_equal(raw[DETECTIONS_OUTPUT][0], np.tile([0, 0, 0, 0, 0, -1], (3, 1)))


def test_the_wrapper_keeps_the_artifacts_nodes_and_weights(nanodet_manifest, artifact):
    m = serving(nanodet_manifest, fused_preprocess=True, server_decode=True)
    original, wrapped = onnx.load_from_string(artifact), onnx.load_from_string(fused_model(m, artifact))
    ours = {n.name for n in wrapped.graph.node if n.name.startswith("edgecv/")}
    assert {n.name for n in wrapped.graph.node} - ours == {n.name for n in original.graph.node}
    weights = {i.name: i for i in wrapped.graph.initializer}
    assert all(weights[i.name] == i for i in original.graph.initializer)
    assert [i.name for i in wrapped.graph.input] == [FUSED_INPUT]
    assert [o.name for o in wrapped.graph.output] == [DETECTIONS_OUTPUT]


def test_old_opsets_are_refused_with_the_reason(nanodet_manifest, artifact):
    model = onnx.load_from_string(artifact)
    model.opset_import[0].version = 11
    with pytest.raises(FuseError, match="opset 11"):
        fused_model(serving(nanodet_manifest, fused_preprocess=True), model.SerializeToString())


@pytest.fixture(scope="module")
def fused_server(nanodet_manifest, tmp_path_factory):
    """A real Triton serving nanodet-m rendered with fused uint8 preprocessing and server-side decode."""
    from fleet.local.triton import triton
    from fleet.triton.render import render

    m = serving(nanodet_manifest, fused_preprocess=True, server_decode=True)
    repo = tmp_path_factory.mktemp("fused-models")
    render(m, repo, "python")
    with triton(repo, [m.name], workdir=tmp_path_factory.mktemp("fused-server")) as server:
        yield m, server


@pytest.mark.integration
def test_through_triton_with_shared_memory(fused_server, sample_frames, today):
    """The app's uint8 + fixed-output path end to end: render, a real Triton, system shared memory."""
    from app.pipeline.infer import TritonInfer

    m, server = fused_server
    infer = TritonInfer(m, server.grpc_url, max_batch=len(sample_frames), shared_memory=True).start(60)
    try:
        slot = infer.acquire()
        assert slot.input.dtype == np.uint8 and slot.input.shape == (len(sample_frames), 416, 416, 3)
        pre = Preprocessor(m.served_input, 1)
        infos = [pre.write_to(slot.input[i], f) for i, f in enumerate(sample_frames)]
        # Decoded before close(): the outputs are views of shared memory that close() frees.
        got = decoder_for(m)(infer.infer_now(slot, len(sample_frames)), infos)
    finally:
        infer.close()
    assert_same_detections(got, today[2])


class StillCamera:
    """A frame source for the Pipeline: the same frame, as fast as it is taken."""

    def __init__(self, camera_id: str, image: np.ndarray):
        self.camera_id, self.image, self.up, self.on_frame, self.seq = camera_id, image, True, None, 0
        self.last_error = None

    def take(self):
        import time

        from app.pipeline.types import Frame

        self.seq += 1
        return Frame(self.camera_id, self.seq, time.time(), self.image, time.monotonic())

    def start(self):
        return self

    def stop(self, timeout=None):
        pass

    def watch(self) -> bool:
        return self.up

    @property
    def alive(self) -> bool:
        return True


@pytest.mark.integration
def test_the_live_pipeline_runs_on_the_fused_model(fused_server, sample_frames):
    """Pipeline (the app's loop) picks the served tensors from the manifest: uint8 in, detections out."""
    from app.config import AppConfig, Resolved
    from app.runner import Pipeline

    m, server = fused_server
    zone = {"name": "all", "polygon": [[0, 0], [5000, 0], [5000, 5000], [0, 5000]]}
    cfg = AppConfig.model_validate({
        "site_id": "s", "device_id": "d", "manifest": "unused.yaml", "triton": {"url": server.grpc_url},
        "cameras": [{"id": c, "url": f"rtsp://x/{c}", "zones": [zone], "rules": [
            {"name": "person", "kind": "zone_intrusion", "zone": "all", "classes": ["person"]}]} for c in ("a", "b")],
    })
    pipe = Pipeline(Resolved(cfg, m, 4, 0.005), sources=[StillCamera(c, sample_frames[0]) for c in ("a", "b")])
    pipe.run(duration_s=3.0)
    assert pipe.frames_processed >= 4 and pipe.frames_dropped == 0
    assert pipe.detections_per_class.get("person", 0) >= 4 * pipe.frames_processed  # 5+ people in the frame
    assert pipe.events_sent >= 2  # the rules fired on each camera


@pytest.mark.integration
def test_load_times_cold_and_warm_on_a_running_triton(triton_server, nanodet_manifest, tmp_path):
    """On the shared server: the model is unloaded and loaded twice, and ready again at the end."""
    from fleet.triton.load_time import load_times

    server = triton_server
    cache = tmp_path / "engines"
    cache.mkdir()
    (cache / "stale.engine").write_bytes(b"an engine of another build")
    times = load_times(server.http_url, nanodet_manifest.name, engine_cache_dir=cache)
    assert not (cache / "stale.engine").exists()  # the cold load started from an empty cache
    assert 0 < times.cold_s < 60 and 0 < times.warm_s < 60 and times.within_budget
    assert times.as_dict()["budget_s"] == 30.0
    import tritonclient.http as httpclient

    assert httpclient.InferenceServerClient(server.http_url).is_model_ready(nanodet_manifest.name)
