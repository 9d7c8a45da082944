"""Fixtures shared by the capture tests (OpenCV and GStreamer readers)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """20 frames at 50 fps, frame k filled with the value 10*k (so frames can be told apart)."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 50.0, (64, 48))
    for k in range(20):
        writer.write(np.full((48, 64, 3), 10 * k, np.uint8))
    writer.release()
    return path
