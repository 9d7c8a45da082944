"""Frame -> model input: letterbox, channel order, mean/std and layout, written into a preallocated batch buffer.

The hot path allocates nothing per frame: cv2.resize writes into a view of a reused uint8 canvas, and the
normalisation writes straight into the batch buffer's slot with in-place numpy arithmetic.

With a fused model (`triton.fused_preprocess`: the served input is letterboxed uint8 BGR NHWC and the graph
does cast, mean/std, channel order and layout) there is no canvas: cv2.resize writes the frame straight into
the batch slot in shared memory and only the padding strips are painted, a quarter of float32's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from fleet.spec.manifest import InputSpec


@dataclass(frozen=True, slots=True)
class LetterboxInfo:
    """How a frame was placed in the model input: input = frame * scale + pad (per axis)."""

    scale: float  # x scale; the y scale too unless `scale_y` is set (resize: stretch)
    pad_x: int
    pad_y: int
    orig_w: int
    orig_h: int
    scale_y: float | None = None

    @property
    def sy(self) -> float:
        return self.scale if self.scale_y is None else self.scale_y


def letterbox_geometry(frame_w: int, frame_h: int, in_w: int, in_h: int, resize: str = "letterbox") -> LetterboxInfo:
    """Where a frame of frame_w x frame_h lands in an in_w x in_h input (centred, aspect kept for letterbox)."""
    if frame_w <= 0 or frame_h <= 0:
        raise ValueError(f"frame has no pixels: {frame_w}x{frame_h}")
    if resize == "stretch":
        return LetterboxInfo(in_w / frame_w, 0, 0, frame_w, frame_h, scale_y=in_h / frame_h)
    scale = min(in_w / frame_w, in_h / frame_h)
    new_w, new_h = max(1, round(frame_w * scale)), max(1, round(frame_h * scale))
    # The scales actually applied (integer sizes), so that unletterbox inverts exactly.
    sx, sy = new_w / frame_w, new_h / frame_h
    return LetterboxInfo(sx, (in_w - new_w) // 2, (in_h - new_h) // 2, frame_w, frame_h, None if sx == sy else sy)


def placed_size(info: LetterboxInfo) -> tuple[int, int]:
    """Width and height of the resized frame inside the input."""
    return round(info.orig_w * info.scale), round(info.orig_h * info.sy)


class Preprocessor:
    """Writes frames into `buffer` (max_batch, *model input shape), one slot per frame.

    `write(slot, frame_bgr)` returns the LetterboxInfo that `unletterbox` needs to map boxes back.
    `buffer` may be given (e.g. a view into shared memory registered with Triton); `write_to(dst, frame)`
    fills any one-image array of the input's shape and dtype. Not thread-safe (one reused canvas): use one
    Preprocessor per thread.
    """

    def __init__(self, spec: InputSpec, max_batch: int, buffer: np.ndarray | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.spec = spec
        self.width, self.height = spec.width, spec.height
        self.max_batch = max_batch
        dtype = np.dtype(spec.dtype.numpy)
        identity = list(spec.mean) == [0.0] * 3 and list(spec.std) == [1.0] * 3
        if dtype.kind != "f" and not identity:
            raise ValueError(f"input {spec.name}: dtype {spec.dtype} cannot hold mean/std normalised values")
        if buffer is None:
            buffer = np.zeros((max_batch, *spec.shape), dtype)
        elif buffer.shape != (max_batch, *spec.shape) or buffer.dtype != dtype:
            raise ValueError(f"buffer is {buffer.dtype} {buffer.shape}; expected {dtype} {(max_batch, *spec.shape)}")
        self.buffer = buffer
        self._canvas = np.full((self.height, self.width, 3), spec.pad_value, np.uint8)
        self._placed: tuple[int, int, int, int] | None = None  # (x, y, w, h) of the image on the canvas
        # (x - mean) / std == x * (1/std) + (-mean/std); mean/std are in the model's channel order.
        shape = (3, 1, 1) if spec.layout == "NCHW" else (3,)
        self._mul = (1.0 / np.asarray(spec.std, np.float32)).reshape(shape)
        self._add = (-np.asarray(spec.mean, np.float32) / np.asarray(spec.std, np.float32)).reshape(shape)
        self._identity = identity
        # The destination is itself a letterboxed BGR HWC uint8 image: resize straight into it.
        self._direct = dtype == np.uint8 and spec.layout == "NHWC" and spec.channel_order == "BGR" and identity
        # Views of the canvas in the model's channel order and layout (no copies).
        chans = self._canvas if spec.channel_order == "BGR" else self._canvas[:, :, ::-1]
        self._source = chans.transpose(2, 0, 1) if spec.layout == "NCHW" else chans

    def geometry(self, frame_w: int, frame_h: int) -> LetterboxInfo:
        return letterbox_geometry(frame_w, frame_h, self.width, self.height, self.spec.resize)

    def write(self, slot: int, frame_bgr: np.ndarray) -> LetterboxInfo:
        """Letterbox + normalise one BGR uint8 HxWx3 frame into buffer[slot]."""
        if not 0 <= slot < self.max_batch:
            raise IndexError(f"slot {slot} outside the batch buffer (max_batch {self.max_batch})")
        return self.write_to(self.buffer[slot], frame_bgr)

    def write_to(self, out: np.ndarray, frame_bgr: np.ndarray) -> LetterboxInfo:
        """Letterbox + normalise one frame into `out` (one image: the input's shape and dtype)."""
        if out.shape != self._source.shape or out.dtype != self.buffer.dtype:
            raise ValueError(
                f"destination is {out.dtype} {out.shape}; input {self.spec.name} is {self.buffer.dtype} {self._source.shape}"
            )
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3 or frame_bgr.dtype != np.uint8:
            raise ValueError(f"expected a BGR uint8 HxWx3 frame, got {frame_bgr.dtype} {frame_bgr.shape}")
        h, w = frame_bgr.shape[:2]
        info = self.geometry(w, h)
        new_w, new_h = placed_size(info)
        if self._direct:
            return self._write_direct(out, frame_bgr, info, new_w, new_h)
        placed = (info.pad_x, info.pad_y, new_w, new_h)
        if placed != self._placed:  # a new frame size: repaint the border once, not per frame
            self._canvas[:] = self.spec.pad_value
            self._placed = placed
        view = self._canvas[info.pad_y : info.pad_y + new_h, info.pad_x : info.pad_x + new_w]
        if (new_w, new_h) == (w, h):
            view[...] = frame_bgr
        else:
            cv2.resize(frame_bgr, (new_w, new_h), dst=view, interpolation=cv2.INTER_LINEAR)
        if self._identity:
            np.copyto(out, self._source, casting="unsafe")
        else:
            np.multiply(self._source, self._mul, out=out, casting="unsafe")
            out += self._add
        return info

    def _write_direct(self, out: np.ndarray, frame: np.ndarray, info: LetterboxInfo, new_w: int, new_h: int):
        # Paint only the padding (a slot's previous frame may have been placed elsewhere), then the image.
        x, y, pad = info.pad_x, info.pad_y, self.spec.pad_value
        out[:y] = pad
        out[y + new_h :] = pad
        out[y : y + new_h, :x] = pad
        out[y : y + new_h, x + new_w :] = pad
        view = out[y : y + new_h, x : x + new_w]
        if (new_w, new_h) == frame.shape[1::-1]:
            view[...] = frame
        else:
            cv2.resize(frame, (new_w, new_h), dst=view, interpolation=cv2.INTER_LINEAR)
        return info

    def batch(self, n: int) -> np.ndarray:
        """The first n slots (a view, no copy) — what goes to the model."""
        return self.buffer[:n]


def unletterbox(boxes: np.ndarray, info: LetterboxInfo, clip: bool = True) -> np.ndarray:
    """Map (N, 4) x1, y1, x2, y2 boxes from model-input pixels back to frame pixels (a new float32 array)."""
    out = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    out[:, 0::2] -= info.pad_x
    out[:, 1::2] -= info.pad_y
    out[:, 0::2] /= info.scale
    out[:, 1::2] /= info.sy
    if clip:
        np.clip(out[:, 0::2], 0, info.orig_w, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, info.orig_h, out=out[:, 1::2])
    return out
