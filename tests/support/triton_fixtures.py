"""Shared fixtures for integration tests: the bundled NanoDet served by a local Triton (nvidia-pytriton's server).

- `nanodet_manifest`: the validated manifest of models/nanodet-m;
- `triton_repository`: a model repository rendered for it (python backend), once per session;
- `triton_server`: a running Triton with nanodet-m loaded, shared by the session (its `grpc_url`,
  `http_url`, `metrics_url`); a test that kills it must `start()` it again before it ends;
- `triton_factory`: `make()` -> a fresh, started server of your own (stopped at teardown), for fault tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.local.triton import TritonService, triton
from fleet.repo import REPO_ROOT
from fleet.spec.manifest import ModelManifest, load_manifest
from fleet.triton.render import render

NANODET = REPO_ROOT / "models" / "nanodet-m" / "manifest.yaml"


@pytest.fixture(scope="session")
def nanodet_manifest() -> ModelManifest:
    return load_manifest(NANODET)


@pytest.fixture(scope="session")
def triton_repository(tmp_path_factory, nanodet_manifest) -> Path:
    out = tmp_path_factory.mktemp("triton-models")
    render(nanodet_manifest, out, "python")
    return out


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory, triton_repository, nanodet_manifest):
    server = triton(triton_repository, [nanodet_manifest.name], workdir=tmp_path_factory.mktemp("triton-server"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def triton_factory(tmp_path_factory, triton_repository, nanodet_manifest):
    started: list[TritonService] = []

    def make(**kw) -> TritonService:
        server = triton(triton_repository, [nanodet_manifest.name], workdir=tmp_path_factory.mktemp("triton"), **kw)
        started.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in started:
            server.stop()


def serving(manifest: ModelManifest, **triton_updates) -> ModelManifest:
    """`manifest` with its triton section updated, e.g. serving(m, fused_preprocess=True, server_decode=True)."""
    return manifest.model_copy(update={"triton": manifest.triton.model_copy(update=triton_updates)})


@pytest.fixture(scope="session")
def sample_frames():
    """Four frames of the bundled sample video (people in view), BGR uint8, 768x576."""
    import cv2

    from fleet.local.rtsp import sample_video

    cap = cv2.VideoCapture(str(sample_video()))
    frames = []
    for i in range(120):
        ok, frame = cap.read()
        assert ok, "cannot read the sample video"
        if i % 30 == 29:
            frames.append(frame)
    cap.release()
    return frames
