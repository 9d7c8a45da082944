"""What reviewers send over the API, validated with pydantic; every error names its field.

The ingest wire format (devices -> POST /api/items) is a contract shared with the device app:
it lives in fleet/spec/review_wire.py and is re-exported here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fleet.spec.review_wire import (  # noqa: F401  (re-exported: the service's one import point)
    ClassName,
    IngestAnswer,
    IngestItem,
    ItemId,
    LabelBox,
    Name,
    Prediction,
    RelPath,
    Strict,
)


class Correction(Strict):
    """The reviewer's boxes replace the model's. An empty list says: nothing to detect here."""

    boxes: list[LabelBox] = Field(max_length=500)


# --- what the API answers (response models: the OpenAPI document states them, FastAPI checks them) ------

class Box(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")
    box: list[float]
    class_name: str = Field(alias="class")


class ItemOut(BaseModel):
    id: str
    reason: str
    site: str
    device: str
    camera: str
    model: str
    classes: list[str]
    width: int
    height: int
    image: str
    thumb: str
    clip: str | None
    event_id: str | None
    predictions: list[dict[str, Any]]
    captured_at: float | None
    created_at: float
    status: str
    decision: str | None
    labels: list[dict[str, Any]] | None
    claimed_by: str | None
    claimed_at: float | None
    reviewed_by: str | None
    reviewed_at: float | None
    review_seconds: float | None


class ClaimOut(BaseModel):
    item: ItemOut | None


class ProgressOut(BaseModel):
    done: int
    quota: int
    percent: int


class DecisionOut(BaseModel):
    item: ItemOut
    progress: ProgressOut
    next: str


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    at: float
    actor: str
    action: str
    detail: dict[str, Any]
    undone: bool


class ReviewerThroughput(BaseModel):
    reviewer: str
    items: int
    items_per_hour: float | None
    median_seconds: float | None
    decisions: dict[str, int]


class ThroughputOut(BaseModel):
    since: float
    until: float
    reviewers: list[ReviewerThroughput]


class CorrectionRateOut(BaseModel):
    since: float
    until: float
    reviewed: int
    corrected: int
    rate: float | None
    by_decision: dict[str, int]
    filters: dict[str, str]
