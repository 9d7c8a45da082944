"""The app config's optional evidence, drift, sampling and review sections: defaults, derived values, and
every bad input named by file:line: field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from app.config import check_config, load_config
from tests.app.conftest import GOOD

REFERENCE = "reference_confidence: {edges: [0.0, 0.5, 1.0], counts: [3, 7]}"


def write(root: Path, extra: str) -> Path:
    path = root / "app.yaml"
    path.write_text(GOOD + textwrap.dedent(extra))
    return path


def problems(path: Path) -> list[str]:
    return [str(p) for p in check_config(path)[1]]


def test_absent_sections_mean_off(site):  # noqa: F811
    r = load_config(write(site, ""))
    c = r.config
    assert c.evidence is None and c.sampling is None and c.review is None
    assert r.drift_reference is None  # the manifest has no reference histogram: no drift monitor


def test_sections_load_and_evidence_keys_use_site_and_device(site, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DEV_TOKEN", "t0k")
    r = load_config(write(site, f"""\
        evidence:
          dir: /var/lib/edgecv/evidence
          pre_roll_s: 2
          store: {{bucket: edgecv-evidence, endpoint_url: "http://127.0.0.1:9000"}}
        drift:
          min_samples: 100
          thresholds: {{psi: 0.3}}
          {REFERENCE}
        sampling: {{max_per_minute: 12}}
        review: {{url: "https://review.example", token_env: DEV_TOKEN}}
        """))
    c = r.config
    assert r.evidence_prefix == "site-a/jetson-01"
    assert c.evidence.packager_config.pre_roll_s == 2 and not hasattr(c.evidence.packager_config, "store")
    assert c.evidence.store.region == "us-east-1"
    assert c.drift.monitor_config.thresholds.psi == 0.3 and c.drift.monitor_config.min_samples == 100
    assert [float(e) for e in r.drift_reference.edges] == [0.0, 0.5, 1.0]
    assert c.sampling.max_per_minute == 12 and c.review.timeout_s == 5.0


def test_drift_can_be_switched_off(site):  # noqa: F811
    r = load_config(write(site, f"""\
        drift:
          enabled: false
          {REFERENCE}
        """))
    assert r.drift_reference is None


@pytest.mark.parametrize(
    ("extra", "where", "says"),
    [
        ("evidence: {dir: /tmp/e, pre_rol_s: 2}\n", "app.yaml:{L}: evidence.pre_rol_s", "unknown key"),
        ("evidence:\n  store: {bucket: x}\n", "app.yaml:{L1}: evidence.store.bucket", "at least 3"),
        ("evidence:\n  store: {bucket: abc, prefix: other/device}\n", "app.yaml:{L1}: evidence.store.prefix",
         "unknown key"),
        ("drift:\n  thresholds: {psi: -1}\n", "app.yaml:{L1}: drift.thresholds.psi", "greater than 0"),
        ("drift:\n  reference_confidence: {edges: [0, 1], counts: [1, 2]}\n",
         "app.yaml:{L1}: drift.reference_confidence", "one entry fewer"),
        ("sampling: {max_per_minute: 5}\n", "app.yaml:{L}: sampling", "add a review: section"),
        ("review: {url: review.example}\n", "app.yaml:{L}: review.url", "should match"),
        ("review: {url: 'http://r', token_env: NOT_SET_ANYWHERE_H10}\n", "app.yaml:{L}: review.token_env",
         "NOT_SET_ANYWHERE_H10"),
    ],
)
def test_bad_sections_name_file_line_and_field(site, extra, where, says):  # noqa: F811
    found = problems(write(site, extra))
    first = GOOD.count("\n") + 1  # the section's line in the file
    where = where.format(L=first, L1=first + 1)
    assert any(where in p and says in p for p in found), found
