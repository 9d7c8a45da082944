"""The review service's ingest wire format: what a device (app/review_client.py) or the evidence uploader
POSTs to /api/items, validated by the server with the same model. Python 3.10; imports only pydantic.

Boxes are [x1, y1, x2, y2] in frame pixels, as in the evidence event.json (schema v1).
"""

from __future__ import annotations

import posixpath
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

REASONS = ("low_confidence", "alert", "drift", "random")

Name = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True,
                                        pattern=r"^[^\x00-\x1f\x7f]*$")]
ClassName = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True,
                                             pattern=r"^[^\x00-\x1f\x7f]*$")]
# Item ids become file names: no slashes, no leading dot.
ItemId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,127}$")]


def _relative(v: str) -> str:
    # Refused here, as a 422 naming the field, rather than deep in the file system (a NUL byte made a 500).
    if "\x00" in v:
        raise ValueError("must not contain a NUL byte")
    if v.startswith(("/", "\\")) or (len(v) > 1 and v[1] == ":"):
        raise ValueError("must be relative to the evidence store, not an absolute path")
    if ".." in posixpath.normpath(v.replace("\\", "/")).split("/"):
        raise ValueError("must stay inside the evidence store (no '..')")
    return v


RelPath = Annotated[str, StringConstraints(min_length=1, max_length=512), AfterValidator(_relative)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class LabelBox(Strict):
    """A box with a class: what a reviewer's correction is made of."""

    box: tuple[float, float, float, float]
    class_name: ClassName = Field(alias="class")

    @field_validator("box")
    @classmethod
    def _ordered(cls, v: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x1, y1, x2, y2 = v
        if x2 - x1 < 1 or y2 - y1 < 1:
            raise ValueError("must be [x1, y1, x2, y2] with x2 > x1 and y2 > y1 (at least 1 px)")
        return v

    def as_label(self) -> dict:
        return {"box": [round(float(v), 2) for v in self.box], "class": self.class_name}


class Prediction(LabelBox):
    score: float = Field(ge=0, le=1)
    track_id: int | None = None

    def as_prediction(self) -> dict:
        return {**self.as_label(), "score": round(self.score, 4), "track_id": self.track_id}


class IngestItem(Strict):
    """One flagged item from a device or the evidence store. Give exactly one of image, image_path, image_url."""

    id: ItemId
    reason: Literal["low_confidence", "alert", "drift", "random"]
    site: Name
    device: Name
    camera: Name
    model: Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[0-9]+\.[0-9]+\.[0-9]+\S*$", max_length=160)]
    classes: list[ClassName] | None = Field(None, max_length=64,
                                               description="default: the predicted boxes' classes")
    image: str | None = Field(None, description="base64 JPEG")
    image_path: RelPath | None = Field(None, description="path of a JPEG inside the evidence store")
    image_url: AnyHttpUrl | None = Field(None, description="only from the server's allowed evidence stores")
    width: int | None = Field(None, gt=0, le=16384)
    height: int | None = Field(None, gt=0, le=16384)
    boxes: list[Prediction] = Field(default_factory=list, max_length=500)
    clip_path: RelPath | None = Field(None, description="evidence clip (H.264 MP4) inside the evidence store")
    clip_url: AnyHttpUrl | None = None
    event_id: Name | None = None
    captured_at: float | None = Field(None, ge=0, description="Unix time of the frame")

    @model_validator(mode="after")
    def _one_image(self) -> IngestItem:
        given = [k for k in ("image", "image_path", "image_url") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of image, image_path, image_url (got {given or 'none'})")
        if self.image_url is not None and (self.width is None or self.height is None):
            raise ValueError("width and height are required with image_url")
        if self.clip_path is not None and self.clip_url is not None:
            raise ValueError("give at most one of clip_path, clip_url")
        return self


class IngestAnswer(BaseModel):
    """The server's answer to POST /api/items: 201 created, 200 when the same item was already there."""

    id: str
    created: bool
    status: str
