"""edgecv-cloud: one ComponentResource per concern; `stack.build()` wires them (see pulumi/README.md)."""

from .artifact_store import ArtifactStore, ArtifactStoreArgs
from .evidence_store import EvidenceStore, EvidenceStoreArgs
from .identities import Identities, IdentitiesArgs
from .telemetry import Telemetry, TelemetryArgs

__all__ = [
    "ArtifactStore",
    "ArtifactStoreArgs",
    "EvidenceStore",
    "EvidenceStoreArgs",
    "Identities",
    "IdentitiesArgs",
    "Telemetry",
    "TelemetryArgs",
]
