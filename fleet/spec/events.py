"""The event wire formats: the MQTT event payload (app.pipeline.types.Event.to_payload, schema 1)
and an evidence package's event.json, whose JSON Schema lives beside this module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EVENT_SCHEMA_PATH = Path(__file__).with_name("event_schema.json")
EVENT_TOPICS = "edgecv/<site>/<device>/<camera>/events"


def event_schema() -> dict[str, Any]:
    """The JSON Schema of an evidence package's event.json."""
    return json.loads(EVENT_SCHEMA_PATH.read_text())
