"""The rendered NanoDet repository served by a real Triton (nvidia-pytriton's server, python backend):
tritonclient over HTTP and gRPC answers with onnxruntime's numbers; the server survives a kill + start."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from click.testing import CliRunner

from fleet.demo import demo, infer_frames, sample_frames
from fleet.local.triton import triton
from fleet.repo import REPO_ROOT
from fleet.triton.render import render

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def session(nanodet_manifest):
    return ort.InferenceSession(str(nanodet_manifest.artifact.local_path(REPO_ROOT)), providers=["CPUExecutionProvider"])


def infer(client_mod, url, manifest, x):
    inp = client_mod.InferInput(manifest.input.name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    outs = [client_mod.InferRequestedOutput(o.name) for o in manifest.outputs]
    result = client_mod.InferenceServerClient(url).infer(manifest.name, [inp], outputs=outs)
    return {o.name: result.as_numpy(o.name) for o in manifest.outputs}


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_answers_with_onnxruntime_numbers(triton_server, nanodet_manifest, session, protocol, batch):
    x = np.random.default_rng(batch).standard_normal((batch, *nanodet_manifest.input.shape)).astype(np.float32)
    names = [o.name for o in nanodet_manifest.outputs]
    expected = dict(zip(names, session.run(names, {nanodet_manifest.input.name: x}), strict=True))
    client_mod, url = (httpclient, triton_server.http_url) if protocol == "http" else (grpcclient, triton_server.grpc_url)
    got = infer(client_mod, url, nanodet_manifest, x)
    for name in names:
        assert got[name].shape == (batch, *next(o.shape for o in nanodet_manifest.outputs if o.name == name))
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
    assert got[names[0]].std() > 0  # real numbers, not a constant


def test_served_config_and_metrics(triton_server, nanodet_manifest):
    cfg = grpcclient.InferenceServerClient(triton_server.grpc_url).get_model_config(nanodet_manifest.name).config
    assert cfg.max_batch_size == 8 and list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert cfg.parameters["manifest"].string_value == nanodet_manifest.ref
    metrics = requests.get(triton_server.metrics_url, timeout=5).text
    assert f'nv_inference_request_success{{model="{nanodet_manifest.name}"' in metrics


def test_frames_through_triton_find_people(triton_server, nanodet_manifest):
    frames = sample_frames([0, 199])
    for protocol, url in (("grpc", triton_server.grpc_url), ("http", triton_server.http_url)):
        dets = infer_frames(nanodet_manifest, frames, url, protocol)
        assert [int(((d.class_ids == 0) & (d.scores >= 0.5)).sum()) >= 3 for d in dets] == [True, True]


def test_requests_batched_together_get_their_own_answers(tmp_path, nanodet_manifest, session):
    """A long queue delay makes Triton hand several requests to one execute(): model.py must split them back."""
    t = nanodet_manifest.triton
    batching = t.dynamic_batching.model_copy(update={"preferred_batch_sizes": [8], "max_queue_delay_us": 500_000})
    slow = nanodet_manifest.model_copy(update={"triton": t.model_copy(update={"dynamic_batching": batching})})
    render(slow, tmp_path / "models", "python")
    names = [o.name for o in slow.outputs]
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((n, *slow.input.shape)).astype(np.float32) for n in (1, 2, 1, 3)]
    with triton(tmp_path / "models", [slow.name], workdir=tmp_path / "server") as server:
        client = httpclient.InferenceServerClient(server.http_url, concurrency=len(xs))
        pending = []
        for x in xs:
            inp = httpclient.InferInput(slow.input.name, list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            outputs = [httpclient.InferRequestedOutput(n) for n in names]
            pending.append(client.async_infer(slow.name, [inp], outputs=outputs))
        results = [p.get_result() for p in pending]
        stats = client.get_inference_statistics(slow.name)["model_stats"][0]
    assert stats["execution_count"] < stats["inference_count"] == 7  # requests were merged into fewer executions
    for x, result in zip(xs, results, strict=True):
        expected = session.run(names, {slow.input.name: x})
        for name, exp in zip(names, expected, strict=True):
            np.testing.assert_allclose(result.as_numpy(name), exp, rtol=1e-5, atol=1e-6, err_msg=name)


def test_killed_server_starts_again_on_the_same_ports(triton_factory, nanodet_manifest):
    server = triton_factory()
    ports = (server.http_port, server.grpc_port, server.metrics_port)
    x = np.zeros((1, *nanodet_manifest.input.shape), np.float32)
    before = infer(grpcclient, server.grpc_url, nanodet_manifest, x)
    server.kill()
    assert not server.ready()
    server.start()
    assert (server.http_port, server.grpc_port, server.metrics_port) == ports
    after = infer(grpcclient, server.grpc_url, nanodet_manifest, x)
    np.testing.assert_array_equal(after["Identity:0"], before["Identity:0"])


def test_demo_prints_the_detections():
    res = CliRunner().invoke(demo, ["--once", "--protocol", "http"])
    assert res.exit_code == 0, res.output
    assert "person" in res.output and "nanodet-m@1.0.0" in res.output
