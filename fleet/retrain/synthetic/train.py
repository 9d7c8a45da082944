"""Train, export and run the synthetic-scene detector.

    python -m fleet.retrain.synthetic.train --steps 1500 --out models/synthetic-shapes/synthetic-shapes.onnx

Training draws fresh scenes every step (no dataset on disk); `extra` adds labelled samples (the
reviewed edge cases of the retraining loop) to every batch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from fleet.retrain.synthetic.scenes import CLASSES, SceneStyle, make_scene

SIZE = 128
INPUT_NAME, OUTPUT_NAMES = "images", ("boxes", "scores", "classes")


def to_tensor_batch(images: list[np.ndarray]) -> np.ndarray:
    """BGR uint8 HxWx3 -> float32 NCHW in [0, 1] (the manifest's mean 0, std 255)."""
    return np.stack([img.transpose(2, 0, 1) for img in images]).astype(np.float32) / 255.0


def train(
    steps: int,
    batch: int = 32,
    seed: int = 0,
    init: Path | None = None,
    extra: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] | None = None,
    extra_share: float = 0.5,
    lr: float = 3e-3,
    log_every: int = 100,
):
    """Returns a trained TinyCenterNet. `init` fine-tunes from a saved state dict."""
    import torch

    from fleet.retrain.synthetic.model import TinyCenterNet, loss, targets

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    rng = np.random.default_rng(seed)
    net = TinyCenterNet(len(CLASSES))
    if init:
        net.load_state_dict(torch.load(init, weights_only=True))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    n_extra = int(batch * extra_share) if extra else 0
    start = time.monotonic()
    net.train()
    for step in range(steps):
        imgs, boxes, classes = [], [], []
        for _ in range(batch - n_extra):
            img, b, c = make_scene(rng, SIZE, SceneStyle.base())
            imgs.append(img), boxes.append(b), classes.append(c)
        for j in rng.integers(0, len(extra[0]), n_extra) if n_extra else []:
            img = extra[0][j]
            flip = rng.random() < 0.5  # cheap augmentation of the few reviewed samples
            b = extra[1][j].copy()
            if flip:
                img = img[:, ::-1]
                b[:, [0, 2]] = SIZE - b[:, [2, 0]]
            imgs.append(np.ascontiguousarray(img)), boxes.append(b), classes.append(extra[2][j])
        x = torch.from_numpy(to_tensor_batch(imgs))
        heat_t, reg_t, mask = targets(boxes, classes, len(CLASSES), SIZE)
        out = net(x)
        value = loss(out, heat_t, reg_t, mask)
        opt.zero_grad()
        value.backward()
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:5d}  loss {value.item():.3f}  {time.monotonic() - start:.0f}s", flush=True)
    return net.eval()


def export_onnx(net, path: Path) -> Path:
    """ONNX with decoding inside and a dynamic batch dimension."""
    import torch

    from fleet.retrain.synthetic.model import Decoded

    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = Decoded(net).eval()
    dummy = torch.zeros(1, 3, SIZE, SIZE)
    torch.onnx.export(
        wrapped, (dummy,), str(path), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
        dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}},
        opset_version=17, dynamo=False,
    )
    return path


def predict(onnx_path: Path, images: list[np.ndarray], score_threshold: float = 0.05, batch: int = 64) -> list[dict]:
    """COCO results list for images with ids 1..n (as fleet.retrain.synthetic.scenes.make_dataset numbers them)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    results = []
    for start in range(0, len(images), batch):
        x = to_tensor_batch(images[start:start + batch])
        boxes, scores, classes = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        for k in range(len(x)):
            for box, score, cls in zip(boxes[k], scores[k], classes[k], strict=True):
                if score < score_threshold:
                    continue
                x1, y1, x2, y2 = (float(np.clip(v, 0, SIZE)) for v in box)
                results.append({"image_id": start + k + 1, "category_id": int(cls) + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="ONNX path; the state dict goes beside it (.pt)")
    args = ap.parse_args()
    import torch

    net = train(args.steps, args.batch, args.seed)
    torch.save(net.state_dict(), args.out.with_suffix(".pt"))
    export_onnx(net, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
