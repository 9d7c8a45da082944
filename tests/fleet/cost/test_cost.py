"""The cost model: figures checked by hand for one small fleet, the break-even month against a direct
month-by-month computation, and invalid inputs refused with file, line and field."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib import image

from fleet.cost.cli import cost
from fleet.cost.model import CostConfig, CostConfigError, Option, break_even_month, evaluate, load_config

# One site, 2 devices, 2 cameras each (4 cameras), over 3 years.
SMALL = {
    "years": 3,
    "fleet": {"sites": 1, "devices_per_site": 2, "cameras_per_device": 2},
    "edge": {
        "device_hardware_usd": {"low": 500, "typical": 1000, "high": 2000},
        "maintenance_fraction_per_year": {"low": 0.10, "typical": 0.12, "high": 0.20},
    },
    "shared": {
        "camera_usd": {"low": 200, "typical": 300, "high": 400},
        "connectivity_usd_per_site_month": {"low": 60, "typical": 120, "high": 180},
    },
    "cloud": {
        "gpu_instance_usd_per_hour": {"low": 0.5, "typical": 1.0, "high": 2.0},
        "streams_per_instance": 3,
        "upstream_mbps_per_stream": 2,
        "bandwidth_usd_per_gb": {"low": 0.02, "typical": 0.05, "high": 0.10},
    },
}


def write(tmp_path, data, name="cost.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_small_fleet_typical_by_hand(tmp_path):
    r = evaluate(load_config(write(tmp_path, SMALL)), "typical")
    # Edge, month 0: 2 devices x $1000 = $2000, 4 cameras x $300 = $1200 -> $3200.
    assert r.edge.capex == 3200
    # Edge, monthly: 1 site x $120 + $2000 x 0.12 / 12 = $120 + $20 = $140.
    assert r.edge.lines["maintenance / month"] == pytest.approx(20)
    assert r.edge.monthly == pytest.approx(140)
    # Cloud, month 0: the cameras, $1200. Monthly: ceil(4 / 3) = 2 instances x $1.0 x 730 h = $1460;
    # 4 streams x 2 Mbps x 328.5 GB = 2628 GB x $0.05 = $131.40; + $120 link -> $1711.40.
    assert r.cloud.capex == 1200 and r.gpu_instances == 2
    assert r.upstream_gb_per_month == pytest.approx(2628)
    assert r.cloud.lines["GPU instances / month"] == pytest.approx(1460)
    assert r.cloud.lines["upstream bandwidth / month"] == pytest.approx(131.4)
    assert r.cloud.monthly == pytest.approx(1711.4)
    # 36 months: edge $3200 + 36 x $140 = $8240; cloud $1200 + 36 x $1711.40 = $62,810.40.
    assert r.tco_edge == pytest.approx(8240)
    assert r.tco_cloud == pytest.approx(62810.4)
    # Month 1: edge $3340 > cloud $2911.40; month 2: edge $3480 <= cloud $4622.80 -> month 2.
    assert r.break_even_month == 2


def test_small_fleet_low_by_hand(tmp_path):
    r = evaluate(load_config(write(tmp_path, SMALL)), "low")
    # Edge: $1000 + $800 = $1800; monthly $60 + $1000 x 0.10 / 12 = $68.33.
    assert r.edge.capex == 1800 and r.edge.monthly == pytest.approx(60 + 100 / 12)
    # Cloud: $800; monthly $60 + 2 x $0.5 x 730 = $730 + 2628 GB x $0.02 = $52.56 -> $842.56.
    assert r.cloud.capex == 800 and r.cloud.monthly == pytest.approx(842.56)
    # 36 months: edge $1800 + $2460 = $4260; cloud $800 + $30,332.16 = $31,132.16.
    assert r.tco_edge == pytest.approx(4260) and r.tco_cloud == pytest.approx(31132.16)
    # Month 1: $1868.33 > $1642.56; month 2: $1936.67 <= $2485.12.
    assert r.break_even_month == 2


def test_no_break_even_when_the_cloud_is_cheaper_every_month(tmp_path):
    cfg = dict(SMALL, cloud=dict(SMALL["cloud"], streams_per_instance=100,
                                 gpu_instance_usd_per_hour={"low": 0, "typical": 0, "high": 0.01},
                                 bandwidth_usd_per_gb={"low": 0, "typical": 0, "high": 0}))
    r = evaluate(load_config(write(tmp_path, cfg)), "typical")
    # Cloud monthly = the link only ($120) < edge's $140: the edge never catches up.
    assert r.cloud.monthly == pytest.approx(120) and r.break_even_month is None


def test_break_even_at_purchase_when_the_edge_costs_no_more_up_front():
    assert break_even_month(Option(1000, 10, {}), Option(1000, 50, {}), 36) == 0


def test_break_even_beyond_the_horizon_is_none():
    # Catches up in month 40 (4000 / 100), after a 36-month horizon.
    assert break_even_month(Option(5000, 0, {}), Option(1000, 100, {}), 36) is None
    assert break_even_month(Option(5000, 0, {}), Option(1000, 100, {}), 40) == 40


def direct_break_even(cfg: CostConfig, scenario: str) -> tuple[int | None, list[float], list[float]]:
    """Month by month from the raw inputs: running totals, first month the edge is at or below the cloud."""
    f, e, s, c = cfg.fleet, cfg.edge, cfg.shared, cfg.cloud
    devices = f.sites * f.devices_per_site
    cameras = devices * f.cameras_per_device
    hw = devices * e.device_hardware_usd.at(scenario)
    edge_total = hw + cameras * s.camera_usd.at(scenario)
    cloud_total = cameras * s.camera_usd.at(scenario)
    link = f.sites * s.connectivity_usd_per_site_month.at(scenario)
    edge_month = link + hw * e.maintenance_fraction_per_year.at(scenario) / 12
    cloud_month = (link + math.ceil(cameras / c.streams_per_instance) * c.gpu_instance_usd_per_hour.at(scenario) * 730
                   + cameras * c.upstream_mbps_per_stream * 328.5 * c.bandwidth_usd_per_gb.at(scenario))
    edges, clouds, found = [], [], None
    for month in range(12 * cfg.years + 1):
        if month:
            edge_total += edge_month
            cloud_total += cloud_month
        edges.append(edge_total)
        clouds.append(cloud_total)
        if found is None and edge_total <= cloud_total:
            found = month
    return found, edges, clouds


def ranges(lo: float, hi: float):
    return st.lists(st.floats(lo, hi, allow_nan=False), min_size=3, max_size=3).map(
        lambda v: dict(zip(("low", "typical", "high"), sorted(v), strict=True)))


configs = st.fixed_dictionaries({
    "years": st.integers(1, 10),
    "fleet": st.fixed_dictionaries({"sites": st.integers(1, 50), "devices_per_site": st.integers(1, 10),
                                    "cameras_per_device": st.integers(1, 16)}),
    "edge": st.fixed_dictionaries({"device_hardware_usd": ranges(0, 10_000),
                                   "maintenance_fraction_per_year": ranges(0, 1)}),
    "shared": st.fixed_dictionaries({"camera_usd": ranges(0, 2000),
                                     "connectivity_usd_per_site_month": ranges(0, 500)}),
    "cloud": st.fixed_dictionaries({"gpu_instance_usd_per_hour": ranges(0, 0.2),
                                    "streams_per_instance": st.integers(1, 64),
                                    "upstream_mbps_per_stream": st.floats(0.1, 2),
                                    "bandwidth_usd_per_gb": ranges(0, 0.01)}),
})


@settings(max_examples=300, deadline=None)
@given(configs)
def test_break_even_matches_a_month_by_month_computation(data):
    cfg = CostConfig.model_validate(data)
    for scenario in ("low", "typical", "high"):
        got = evaluate(cfg, scenario).break_even_month
        want, edges, clouds = direct_break_even(cfg, scenario)
        if got != want:  # only a tie, decided differently by rounding, may differ
            m = min(x for x in (got, want) if x is not None)
            assert edges[m] == pytest.approx(clouds[m], rel=1e-9, abs=1e-6), (scenario, got, want)


def test_defaults_are_the_blueprint_figures():
    cfg = load_config()
    assert 3 <= cfg.years <= 5
    assert (cfg.edge.device_hardware_usd.low, cfg.edge.device_hardware_usd.high) == (500, 5000)
    assert (cfg.shared.camera_usd.low, cfg.shared.camera_usd.high) == (200, 1000)
    assert (cfg.shared.connectivity_usd_per_site_month.low, cfg.shared.connectivity_usd_per_site_month.high) == (50, 200)
    assert (cfg.edge.maintenance_fraction_per_year.low, cfg.edge.maintenance_fraction_per_year.high) == (0.10, 0.20)


def test_a_partial_config_overrides_only_its_keys(tmp_path):
    cfg = load_config(write(tmp_path, {"fleet": {"sites": 3}, "edge": {"device_hardware_usd": {"typical": 2500}}}))
    defaults = load_config()
    assert cfg.fleet.sites == 3 and cfg.fleet.devices_per_site == defaults.fleet.devices_per_site
    assert cfg.edge.device_hardware_usd.typical == 2500 and cfg.edge.device_hardware_usd.low == 500


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("fleet:\n  sites: 2\n  site: 3\n", ":3: fleet.site:", "unknown key"),
        ("shared:\n  camera_usd:\n    low: -5\n", ":3: shared.camera_usd.low:", "greater than or equal to 0"),
        ("edge:\n  device_hardware_usd: {low: 6000}\n", ":2: edge.device_hardware_usd:", "low <= typical <= high"),
        ("edge:\n  maintenance_fraction_per_year: {high: 1.5}\n", ":2: edge.maintenance_fraction_per_year.high:",
         "less than or equal to 1"),
        ("cloud:\n  streams_per_instance: 0\n", ":2: cloud.streams_per_instance:", "greater than or equal to 1"),
        ("years: 20\n", ":1: years:", "less than or equal to 10"),
        ("fleet: {sites: many}\n", ":1: fleet.sites:", "valid integer"),
        ("fleet:\n  sites: [1\n", ":", "invalid YAML"),
    ],
)
def test_invalid_inputs_are_refused_with_file_line_and_field(tmp_path, text, where, message):
    path = tmp_path / "cost.yaml"
    path.write_text(text)
    with pytest.raises(CostConfigError) as err:
        load_config(path)
    assert f"{path}{where}" in str(err.value) and message in str(err.value)


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(CostConfigError, match="nope.yaml:1: cannot read file"):
        load_config(tmp_path / "nope.yaml")


def test_cli_prints_the_table_and_writes_png_and_json(tmp_path):
    result = CliRunner().invoke(cost, ["--config", str(write(tmp_path, SMALL)), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "break-even (typical): month 2" in result.output and "$62,810" in result.output
    img = image.imread(tmp_path / "out" / "cost.png")
    assert img.ndim == 3 and img.shape[1] >= 800
    report = json.loads((tmp_path / "out" / "cost.json").read_text())
    assert [s["break_even_month"] for s in report["scenarios"]] == [2, 2, evaluate(load_config(
        write(tmp_path, SMALL, "again.yaml")), "high").break_even_month]


def test_cli_exits_2_on_a_bad_config(tmp_path):
    path = write(tmp_path, {"fleet": {"sites": -1}})
    result = CliRunner().invoke(cost, ["--config", str(path)])
    assert result.exit_code == 2 and f"{path}:2: fleet.sites:" in result.output
