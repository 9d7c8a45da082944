"""tegrastats parsing on real captured lines (tests/fixtures/tegrastats/), one file per L4T release."""

from __future__ import annotations

import pytest

from app.health.tegrastats import TegrastatsParseError, parse_line
from fleet.repo import REPO_ROOT

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "tegrastats"
MB = 1024**2


def lines(name: str) -> list[str]:
    return [ln for ln in (FIXTURES / name).read_text().splitlines() if ln.strip() and not ln.startswith("#")]


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("*.txt")))
def test_every_fixture_line_parses_to_plausible_numbers(name):
    for line in lines(name):
        s = parse_line(line)
        assert 0 < s.ram_used_bytes < s.ram_total_bytes
        assert s.cores and all(c.load_percent is None or 0 <= c.load_percent <= 100 for c in s.cores)
        assert s.gpu_percent is None or 0 <= s.gpu_percent <= 100
        assert s.temperatures and all(-40 < t < 125 for t in s.temperatures.values())  # -256C sentinels dropped
        assert all(0 <= w < 100 for w in s.power_watts.values())


def test_r32_nano_idle_line():
    s = parse_line(lines("r32-nano.txt")[0])
    assert s.ram_used_bytes == 1655 * MB and s.ram_total_bytes == 3956 * MB
    assert s.swap_used_bytes == 0 and s.swap_total_bytes == 1978 * MB
    assert [c.load_percent for c in s.cores] == [12, 10, 11, 12] and s.cores[0].freq_mhz == 102
    assert s.cpu_percent == pytest.approx(11.25)
    assert (s.gpu_percent, s.gpu_freq_mhz, s.emc_percent) == (0, 76, 3)
    assert s.temperatures == {"pll": 36.5, "cpu": 39, "iwlwifi": 44, "pmic": 50, "gpu": 37, "ao": 47.5, "thermal": 38}
    # R32 rails carry no unit: mW.
    assert s.power_watts == {"POM_5V_IN": 2.132, "POM_5V_GPU": 0.078, "POM_5V_CPU": 0.275}
    assert s.timestamp is None


def test_r32_load_line_without_frequencies():
    s = parse_line(lines("r32-nano.txt")[2])
    assert s.cpu_percent == 100 and s.gpu_percent == 99 and s.gpu_freq_mhz is None
    assert s.temperatures["gpu"] == 63


def test_r32_xavier_line_without_rails():
    s = parse_line(lines("r32-xavier-nx.txt")[2])
    assert s.power_watts == {} and len(s.cores) == 6 and s.swap_used_bytes == 608 * MB


def test_r35_orin_two_gpcs_offline_sensors_and_nc_rails():
    s = parse_line(lines("r35-agx-orin.txt")[0])
    assert s.timestamp == "10-16-2023 10:59:22"
    assert len(s.cores) == 12 and s.cpu_percent == pytest.approx(1 / 12)
    assert s.gpu_percent == 0 and s.gpu_freq_mhz == 114  # GR3D_FREQ and GR3D2_FREQ
    assert "cv0" not in s.temperatures  # CV0@-256C: powered down
    assert s.temperatures["soc2"] == 40.062 and s.temperatures["tdiode"] == 32.5
    assert "NC" not in s.power_watts
    assert s.power_watts == {"VDD_GPU_SOC": 4.788, "VDD_CPU_CV": 0.798, "VIN_SYS_5V0": 3.842, "VDDQ_VDD2_1V8AO": 0.707}


def test_r35_bracketed_gpc_frequencies():
    s = parse_line(lines("r35-agx-orin.txt")[3])
    assert s.gpu_percent == 0 and s.gpu_freq_mhz == 0 and s.ram_total_bytes == 62801 * MB
    assert "gpu" not in s.temperatures and s.temperatures["tj"] == 44.343


def test_r36_orin_nano_under_load():
    s = parse_line(lines("r36-orin-nano.txt")[2])
    assert s.gpu_percent == 84 and s.gpu_freq_mhz == 713
    assert s.cpu_percent == pytest.approx((97 + 95 + 95 + 91 + 88 + 93) / 6)
    assert s.cores[5].freq_mhz == 247
    assert s.temperatures["cpu"] == 65.562 and s.temperatures["cv0"] == 63.031  # lower case on R36
    assert s.power_watts == {"VDD_IN": 17.946, "VDD_CPU_GPU_CV": 8.896, "VDD_SOC": 3.923}
    assert s.swap_used_bytes == 2640 * MB


def test_r36_gpu_percent_without_frequency():
    s = parse_line(lines("r36-orin-nano.txt")[0])
    assert s.gpu_percent == 0 and s.gpu_freq_mhz is None and s.emc_percent is None


def test_offline_cores_are_not_averaged():
    s = parse_line("RAM 1000/4000MB (lfb 1x4MB) CPU [50%@1479,off,off,30%@1479] GR3D_FREQ 0% CPU@40C")
    assert [c.load_percent for c in s.cores] == [50, None, None, 30] and s.cpu_percent == 40


@pytest.mark.parametrize("bad", ["", "tegrastats: permission denied", "SWAP 0/1978MB (cached 0MB)"])
def test_lines_that_are_not_tegrastats_are_refused(bad):
    with pytest.raises(TegrastatsParseError, match="not a tegrastats line"):
        parse_line(bad)


def test_a_garbled_cpu_field_is_refused():
    with pytest.raises(TegrastatsParseError, match="CPU core entry"):
        parse_line("RAM 1000/4000MB CPU [50%@1479,abc]")
