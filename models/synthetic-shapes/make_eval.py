"""Write this model's held-out evaluation set: 300 base scenes (COCO ground truth) and v1's predictions.

    .venv/bin/python models/synthetic-shapes/make_eval.py

The PR workflow runs `edgecv gates` on eval/ground_truth.json + eval/predictions.json.
"""

import json
from pathlib import Path

from fleet.retrain.synthetic.scenes import SceneStyle, make_dataset
from fleet.retrain.synthetic.train import predict

HERE = Path(__file__).parent

if __name__ == "__main__":
    images, gt = make_dataset(300, seed=4242, style=SceneStyle.base())
    preds = predict(HERE / "synthetic-shapes-1.0.0.onnx", images)
    (HERE / "eval").mkdir(exist_ok=True)
    (HERE / "eval" / "ground_truth.json").write_text(json.dumps(gt, separators=(",", ":")))
    (HERE / "eval" / "predictions.json").write_text(
        json.dumps([{**p, "bbox": [round(v, 2) for v in p["bbox"]], "score": round(p["score"], 4)} for p in preds],
                   separators=(",", ":")))
    print(f"{len(images)} images, {len(gt['annotations'])} boxes, {len(preds)} predictions")
