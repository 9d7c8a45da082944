"""A local RTSP camera: gst-rtsp-server serving a looping video, for the demo and the tests.

Run under Debian's /usr/bin/python3 (its python3-gi and GStreamer introspection data are built for it);
`fleet.local.rtsp` starts it. The venv's site-packages (same CPython) are appended to sys.path only for
OpenCV and numpy, after Debian's own packages:

    /usr/bin/python3 rtsp_server.py --port 8554 --video vtest.avi --extra-path .venv/lib/python3.11/site-packages

Frames are decoded with OpenCV, resized, and pushed at --fps into an appsrc:
appsrc -> videoconvert -> x264enc tune=zerolatency -> rtph264pay. One shared media serves every client at
rtsp://127.0.0.1:PORT/PATH; the video loops forever.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--video", required=True)
    ap.add_argument("--path", default="/cam")
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--extra-path", action="append", default=[])
    args = ap.parse_args()
    sys.path.extend(args.extra_path)

    import cv2
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    w, h, fps = args.width, args.height, args.fps
    frames = LoopingVideo(cv2, args.video, w, h)

    launch = (
        f"( appsrc name=src is-live=true format=time do-timestamp=true "
        f"caps=video/x-raw,format=BGR,width={w},height={h},framerate={int(round(fps))}/1 "
        "! queue max-size-buffers=2 leaky=downstream ! videoconvert ! video/x-raw,format=I420 "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={int(round(fps))} bitrate=1500 "
        "! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    current = {"src": None}
    lock = threading.Lock()

    def on_configure(_factory, media):
        with lock:
            current["src"] = media.get_element().get_by_name_recurse_up("src")

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)
    factory.connect("media-configure", on_configure)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{args.port}")

    def pump() -> None:
        # Push frames in real time; before a client connects (or between clients) there is no appsrc.
        period, k, t0 = 1.0 / fps, 0, time.monotonic()
        while True:
            with lock:
                src = current["src"]
            if src is not None:
                buf = Gst.Buffer.new_wrapped(frames.next())
                buf.duration = int(Gst.SECOND * period)
                if src.emit("push-buffer", buf) != Gst.FlowReturn.OK:
                    with lock:
                        if current["src"] is src:
                            current["src"] = None  # that media is gone; wait for the next one
            k += 1
            time.sleep(max(0.0, t0 + k * period - time.monotonic()))

    threading.Thread(target=pump, daemon=True).start()
    print(f"serving rtsp://127.0.0.1:{args.port}{args.path} ({w}x{h} at {fps} fps)", flush=True)
    GLib.MainLoop().run()


class LoopingVideo:
    """Frames of a video file resized to w x h as BGR bytes, decoded on the fly, from the start again at the end."""

    def __init__(self, cv2, path: str, w: int, h: int):
        self.cv2, self.path, self.size = cv2, path, (w, h)
        self.cap = cv2.VideoCapture(path)
        if not self.cap.isOpened():
            sys.exit(f"cannot open {path}")

    def next(self) -> bytes:
        ok, img = self.cap.read()
        if not ok:
            self.cap.release()
            self.cap = self.cv2.VideoCapture(self.path)
            ok, img = self.cap.read()
            if not ok:
                sys.exit(f"cannot read frames from {self.path}")
        return self.cv2.resize(img, self.size, interpolation=self.cv2.INTER_AREA).tobytes()


if __name__ == "__main__":
    main()
