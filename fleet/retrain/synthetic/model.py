"""A tiny CenterNet-style detector (about 120k parameters) for the synthetic scenes.

Needs torch (the optional `train` extra); the exported ONNX decodes itself (boxes, scores,
classes), so the device side serves it with the manifest's `boxes_scores_classes` decoder and
never needs torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STRIDE = 4
TOP_K = 20


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyCenterNet(nn.Module):
    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.stem = nn.Sequential(_block(3, 16, 2), _block(16, 32, 2), _block(32, 32))  # stride 4
        self.down = nn.Sequential(_block(32, 48, 2), _block(48, 64))  # stride 8, wider context
        self.skip = nn.Conv2d(32, 64, 1)
        self.fuse = _block(64, 48)

        def head(out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(48, 32, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(32, out, 1))

        self.heat, self.size, self.offset = head(num_classes), head(2), head(2)
        self.heat[-1].bias.data.fill_(-2.19)  # CenterNet's prior: sigmoid(-2.19) = 0.1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s4 = self.stem(x)
        s8 = self.down(s4)
        f = self.fuse(self.skip(s4) + F.interpolate(s8, scale_factor=2, mode="nearest"))
        return self.heat(f), self.size(f), self.offset(f)


class Decoded(nn.Module):
    """Wraps the network with CenterNet decoding: peaks of the heatmap -> top-K boxes."""

    def __init__(self, net: TinyCenterNet, top_k: int = TOP_K):
        super().__init__()
        self.net, self.top_k = net, top_k

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heat, size, offset = self.net(images)
        heat = torch.sigmoid(heat)
        peaks = heat * (F.max_pool2d(heat, 3, 1, 1) == heat).float()
        b, c, h, w = peaks.shape
        scores, index = torch.topk(peaks.reshape(b, -1), self.top_k)
        classes = torch.div(index, h * w, rounding_mode="floor")
        pos = index - classes * (h * w)
        ys = torch.div(pos, w, rounding_mode="floor").float()
        xs = (pos - torch.div(pos, w, rounding_mode="floor") * w).float()
        wh = torch.gather(size.reshape(b, 2, h * w), 2, pos.unsqueeze(1).expand(b, 2, self.top_k))
        off = torch.gather(offset.reshape(b, 2, h * w), 2, pos.unsqueeze(1).expand(b, 2, self.top_k))
        cx, cy = (xs + off[:, 0]) * STRIDE, (ys + off[:, 1]) * STRIDE
        half_w, half_h = wh[:, 0] * STRIDE / 2, wh[:, 1] * STRIDE / 2
        boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=2)
        return boxes, scores, classes


def targets(boxes_list, classes_list, num_classes: int, size: int):
    """CenterNet targets for a batch: gaussian heatmaps, sizes and offsets at object centres."""
    h = w = size // STRIDE
    heat = torch.zeros(len(boxes_list), num_classes, h, w)
    reg = torch.zeros(len(boxes_list), 4, h, w)  # w, h, dx, dy (in output cells)
    mask = torch.zeros(len(boxes_list), 1, h, w)
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    for i, (boxes, classes) in enumerate(zip(boxes_list, classes_list, strict=True)):
        for (x1, y1, x2, y2), cls in zip(boxes.tolist(), classes.tolist(), strict=True):
            cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
            bw, bh = (x2 - x1) / STRIDE, (y2 - y1) / STRIDE
            ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
            sigma = max(0.5, min(bw, bh) / 6)
            g = torch.exp(-((xx - ix) ** 2 + (yy - iy) ** 2) / (2 * sigma**2))
            heat[i, cls] = torch.maximum(heat[i, cls], g)
            reg[i, :, iy, ix] = torch.tensor([bw, bh, cx - ix, cy - iy])
            mask[i, 0, iy, ix] = 1
    return heat, reg, mask


def loss(outputs, heat_t, reg_t, mask) -> torch.Tensor:
    heat, size, offset = outputs
    p = torch.sigmoid(heat).clamp(1e-4, 1 - 1e-4)
    pos = heat_t.eq(1).float()
    neg_w = (1 - heat_t) ** 4
    focal = -(pos * (1 - p) ** 2 * torch.log(p) + (1 - pos) * neg_w * p**2 * torch.log(1 - p)).sum()
    n = pos.sum().clamp(min=1)
    reg = (F.l1_loss(torch.cat([size, offset], 1) * mask, reg_t * mask, reduction="sum")) / n
    return focal / n + 0.1 * reg
