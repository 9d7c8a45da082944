"""`edgecv cost`: total cost of ownership of the edge fleet against running the same cameras on cloud GPUs.

    edgecv cost [--config cost.yaml] [--out DIR]

Inputs: fleet/cost/defaults.yaml, overridden key by key by --config. Every money figure is a low / typical /
high range, and each scenario column takes the same end of every range (low: everything cheap).

Edge:  devices x hardware + cameras x price, bought in month 0;
       every month: sites x connectivity + devices x hardware x maintenance / 12.
Cloud: cameras x price in month 0;
       every month: sites x connectivity + ceil(cameras / streams per instance) x $/h x 730 h
                    + cameras x upstream Mbps x 328.5 GB per Mbps-month x $/GB.
Break-even month: the first month m (0 = the purchase) after which the edge's cumulative cost
(capex + m x monthly) is at or below the cloud's; none when that does not happen within the horizon.

Prints a table (rich); with --out writes cost.png (cumulative cost per year, both options) and cost.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULTS = Path(__file__).with_name("defaults.yaml")
SCENARIOS = ("low", "typical", "high")
HOURS_PER_MONTH = 8760 / 12  # 730
GB_PER_MBPS_MONTH = 1e6 / 8 * 3600 * HOURS_PER_MONTH / 1e9  # 1 Mbit/s for a month = 328.5 GB (decimal)

NonNegative = Annotated[float, Field(ge=0)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Range(Strict):
    low: NonNegative
    typical: NonNegative
    high: NonNegative

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low <= self.typical <= self.high:
            raise ValueError(f"must hold low <= typical <= high (got {self.low}, {self.typical}, {self.high})")
        return self

    def at(self, scenario: str) -> float:
        return getattr(self, scenario)


class FractionRange(Range):
    low: Annotated[float, Field(ge=0, le=1)]
    typical: Annotated[float, Field(ge=0, le=1)]
    high: Annotated[float, Field(ge=0, le=1)]


class FleetSize(Strict):
    sites: Annotated[int, Field(ge=1)]
    devices_per_site: Annotated[int, Field(ge=1)]
    cameras_per_device: Annotated[int, Field(ge=1)]


class Edge(Strict):
    device_hardware_usd: Range
    maintenance_fraction_per_year: FractionRange


class Shared(Strict):
    camera_usd: Range
    connectivity_usd_per_site_month: Range


class Cloud(Strict):
    gpu_instance_usd_per_hour: Range
    streams_per_instance: Annotated[int, Field(ge=1)]
    upstream_mbps_per_stream: Annotated[float, Field(gt=0)]
    bandwidth_usd_per_gb: Range


class CostConfig(Strict):
    years: Annotated[int, Field(ge=1, le=10)]
    fleet: FleetSize
    edge: Edge
    shared: Shared
    cloud: Cloud


@dataclass
class Option:
    """One way of running the cameras, in one scenario."""

    capex: float  # month 0
    monthly: float
    lines: dict[str, float]  # the parts, for the table

    def cumulative(self, month: int) -> float:
        return self.capex + month * self.monthly


@dataclass
class Scenario:
    name: str
    edge: Option
    cloud: Option
    gpu_instances: int
    upstream_gb_per_month: float
    break_even_month: int | None
    tco_edge: float
    tco_cloud: float


def evaluate(cfg: CostConfig, scenario: str) -> Scenario:
    f, e, s, c = cfg.fleet, cfg.edge, cfg.shared, cfg.cloud
    devices = f.sites * f.devices_per_site
    cameras = devices * f.cameras_per_device
    hardware = devices * e.device_hardware_usd.at(scenario)
    cameras_usd = cameras * s.camera_usd.at(scenario)
    connectivity = f.sites * s.connectivity_usd_per_site_month.at(scenario)
    maintenance = hardware * e.maintenance_fraction_per_year.at(scenario) / 12

    instances = math.ceil(cameras / c.streams_per_instance)
    gpu = instances * c.gpu_instance_usd_per_hour.at(scenario) * HOURS_PER_MONTH
    gb = cameras * c.upstream_mbps_per_stream * GB_PER_MBPS_MONTH
    bandwidth = gb * c.bandwidth_usd_per_gb.at(scenario)

    edge = Option(hardware + cameras_usd, connectivity + maintenance, {
        "devices (month 0)": hardware, "cameras (month 0)": cameras_usd,
        "connectivity / month": connectivity, "maintenance / month": maintenance,
    })
    cloud = Option(cameras_usd, connectivity + gpu + bandwidth, {
        "cameras (month 0)": cameras_usd, "connectivity / month": connectivity,
        "GPU instances / month": gpu, "upstream bandwidth / month": bandwidth,
    })
    months = 12 * cfg.years
    return Scenario(scenario, edge, cloud, instances, gb, break_even_month(edge, cloud, months),
                    edge.cumulative(months), cloud.cumulative(months))


def break_even_month(edge: Option, cloud: Option, horizon_months: int) -> int | None:
    """First month m in [0, horizon] with edge.cumulative(m) <= cloud.cumulative(m), else None."""
    def edge_ahead(m: int) -> bool:
        return edge.cumulative(m) <= cloud.cumulative(m)

    if edge_ahead(0):
        return 0
    saving = cloud.monthly - edge.monthly
    if saving <= 0:
        return None  # the edge costs more up front and no less each month: never catches up
    months = (edge.capex - cloud.capex) / saving
    if months > horizon_months + 1:
        return None
    # The division is in floating point: settle on the exact first month by checking its neighbours.
    m = math.ceil(months)
    while m > 0 and edge_ahead(m - 1):
        m -= 1
    while not edge_ahead(m) and m <= horizon_months:
        m += 1
    return m if m <= horizon_months else None


# --- configuration -------------------------------------------------------------------------------------


class CostConfigError(ValueError):
    def __init__(self, problems: list):
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: Path | None = None) -> CostConfig:
    """The defaults, overridden by `path`; raises CostConfigError with FILE:LINE: FIELD: MESSAGE problems."""
    from fleet.spec.problems import Problem, problems_from_validation
    from fleet.spec.yamlsrc import YamlSourceError, load_yaml

    try:
        defaults = load_yaml(DEFAULTS)
        doc = load_yaml(path) if path else defaults
    except YamlSourceError as exc:
        raise CostConfigError([Problem(exc.path, exc.line, "", exc.message)]) from None
    data = _merge(defaults.data, doc.data) if path else defaults.data
    try:
        return CostConfig.model_validate(data)
    except ValidationError as exc:
        raise CostConfigError(problems_from_validation(doc, exc)) from None
