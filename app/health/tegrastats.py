"""Parse `tegrastats` lines (NVIDIA Jetson) into numbers.

One tolerant parser covers the formats seen in the field (fixtures in tests/fixtures/tegrastats/):

- L4T R32 (JetPack 4, Nano / TX2 / Xavier): `CPU [12%@102,off,...]`, `GR3D_FREQ 0%@76` or `GR3D_FREQ 99%`,
  upper-case zones (`CPU@39C`, `PMIC@100C`), power rails without a unit (`POM_5V_IN 2132/2132`, mW);
- L4T R35 (JetPack 5, Orin / Xavier): a leading `MM-DD-YYYY HH:MM:SS` timestamp, `GR3D_FREQ 0%@[0,0]` or
  `GR3D_FREQ 0%@0 GR3D2_FREQ 0%@0`, `CV0@-256C` for powered-down sensors, rails with `mW` (`VDD_GPU_SOC 2399mW/2399mW`);
- L4T R36 (JetPack 6, Orin): lower-case zones (`cpu@48.4C soc2@47.5C tj@49.1C`), `GR3D_FREQ 0%@[305]`, rails
  `VDD_IN 4761mW/4778mW` (newer builds add a third, peak value).

Only the fields the device health exporter needs are kept; unknown tokens are ignored so that a new
JetPack adding engines does not break parsing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# A sensor that is powered down (e.g. CV0 when the DLA is idle) reads -256C on R35.
OFFLINE_SENSOR_C = -256.0

_UNIT_BYTES = {"kB": 1024, "KB": 1024, "MB": 1024**2, "GB": 1024**3}
_TIMESTAMP = re.compile(r"^(\d\d-\d\d-\d{4} \d\d:\d\d:\d\d)\s")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)(kB|KB|MB|GB)")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)(kB|KB|MB|GB)")
_CPU = re.compile(r"\bCPU \[([^\]]*)\](?:@(\d+))?", re.IGNORECASE)
_CORE = re.compile(r"^(\d+)%(?:@(\d+))?$")
_GPU = re.compile(r"\b(GR3D2?)_FREQ (?:(\d+)%)?(?:@\[?([\d,]+)\]?)?")
_EMC = re.compile(r"\bEMC_FREQ (\d+)%(?:@(\d+))?")
# NAME@45.5C; R36 may print a second value after a slash (NAME@45.5C/46C): the first is current.
_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
# RAIL cur/avg[/peak], with or without mW; the lookahead keeps "RAM 1655/3956MB" out.
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?:/\d+(?:mW)?)?(?=\s|$)")
_NOT_RAILS = {"RAM", "SWAP", "IRAM", "NC"}  # NC: a rail input that is not connected


class TegrastatsParseError(ValueError):
    """A line that is not tegrastats output (e.g. an error message printed by the tool)."""


@dataclass
class CpuCore:
    load_percent: float | None  # None: the core is off (hot-unplugged)
    freq_mhz: int | None


@dataclass
class TegraSample:
    ram_used_bytes: int
    ram_total_bytes: int
    swap_used_bytes: int | None = None
    swap_total_bytes: int | None = None
    cores: list[CpuCore] = field(default_factory=list)
    gpu_percent: float | None = None  # GR3D (averaged over GR3D and GR3D2 where both are printed)
    gpu_freq_mhz: float | None = None
    emc_percent: float | None = None  # memory controller (EMC) load
    emc_freq_mhz: float | None = None
    temperatures: dict[str, float] = field(default_factory=dict)  # zone (lower case) -> Celsius
    power_watts: dict[str, float] = field(default_factory=dict)  # rail -> instantaneous W
    timestamp: str | None = None

    @property
    def cpu_percent(self) -> float | None:
        """Mean load of the cores that are on (tegrastats gives no total)."""
        loads = [c.load_percent for c in self.cores if c.load_percent is not None]
        return sum(loads) / len(loads) if loads else None


def _bytes(value: str, unit: str) -> int:
    return int(value) * _UNIT_BYTES[unit]


def _cores(body: str, shared_freq: str | None) -> list[CpuCore]:
    cores = []
    for token in body.split(","):
        token = token.strip()
        if token.lower() == "off" or not token:
            cores.append(CpuCore(None, None))
            continue
        m = _CORE.match(token)
        if not m:
            raise TegrastatsParseError(f"unreadable CPU core entry {token!r}")
        freq = m.group(2) or shared_freq  # R28-style: one frequency after the bracket
        cores.append(CpuCore(float(m.group(1)), int(freq) if freq else None))
    return cores


def parse_line(line: str) -> TegraSample:
    """One line of `tegrastats` output -> TegraSample. Raises TegrastatsParseError if it is not one."""
    line = line.strip()
    ram = _RAM.search(line)
    if not ram:
        raise TegrastatsParseError(f"not a tegrastats line (no RAM field): {line[:80]!r}")
    sample = TegraSample(_bytes(ram.group(1), ram.group(3)), _bytes(ram.group(2), ram.group(3)))
    if ts := _TIMESTAMP.match(line):
        sample.timestamp = ts.group(1)
    if swap := _SWAP.search(line):
        sample.swap_used_bytes = _bytes(swap.group(1), swap.group(3))
        sample.swap_total_bytes = _bytes(swap.group(2), swap.group(3))
    if cpu := _CPU.search(line):
        sample.cores = _cores(cpu.group(1), cpu.group(2))

    loads, freqs = [], []
    for m in _GPU.finditer(line):
        if m.group(2) is not None:
            loads.append(float(m.group(2)))
        if m.group(3):
            freqs += [float(f) for f in m.group(3).split(",") if f]
    sample.gpu_percent = sum(loads) / len(loads) if loads else None
    sample.gpu_freq_mhz = sum(freqs) / len(freqs) if freqs else None
    if emc := _EMC.search(line):
        sample.emc_percent = float(emc.group(1))
        sample.emc_freq_mhz = float(emc.group(2)) if emc.group(2) else None

    for name, value in _TEMP.findall(line):
        celsius = float(value)
        if celsius > OFFLINE_SENSOR_C:
            sample.temperatures[name.lower()] = celsius
    for name, current, _avg in _RAIL.findall(line):
        if name not in _NOT_RAILS:
            sample.power_watts[name] = int(current) / 1000.0  # tegrastats prints mW
    return sample
