"""What the device-offline alert costs the central Prometheus per evaluation, before and after issue 21.

A real Prometheus over a day of `up` for N devices (3 scrape targets each, every 15 s, backfilled with
`promtool tsdb create-blocks-from openmetrics`); each expression is run at the day's end with
`stats=all`, which reports the samples the query touched. Baseline, in the same run: the old rule
(`last_over_time(up[24h])` over every target of every device). Ours: the last-seen recording rule (one
instant `up` per target plus its own previous value) and the alert over it (one sample per device).

    .venv/bin/python -m bench.rule_cost [--devices 10]
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import click
import requests

from fleet.local.procs import require_binary
from fleet.local.prometheus import prometheus

BEFORE = ('max by (site, device) (last_over_time(up{device!=""}[24h])) '
          'unless max by (site, device) (last_over_time(up{device!=""}[5m]))')
# The recording rule without its self-reference (that adds one sample per device) and the alert over it.
RECORD = 'max by (site, device) (timestamp(up{device!=""}))'
DAY, STEP, TARGETS = 86400, 15, ("node", "edgecv-app", "triton")


def backfill(workdir: Path, devices: int, end: int) -> Path:
    text = workdir / "up.om"
    with text.open("w") as f:
        f.write("# TYPE up gauge\n")
        for d in range(devices):
            for job in TARGETS:
                labels = f'up{{site="s1",device="d{d}",job="{job}",instance="127.0.0.1"}}'
                f.writelines(f"{labels} 1 {t}\n" for t in range(end - DAY, end + 1, STEP))
        f.write("# EOF\n")
    subprocess.run([require_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", str(text),
                    str(workdir / "data")], check=True, capture_output=True)
    text.unlink()
    return workdir / "data"


def touched(url: str, promql: str, at: int) -> int:
    body = requests.get(f"{url}/api/v1/query", params={"query": promql, "time": at, "stats": "all"}, timeout=60).json()
    assert body["status"] == "success", body
    return int(body["data"]["stats"]["samples"]["totalQueryableSamples"])


@click.command()
@click.option("--devices", default=10, show_default=True)
@click.option("--fleet", default=10_000, show_default=True, help="fleet size the figures are scaled to")
def main(devices: int, fleet: int) -> None:
    end = 1_700_006_400  # a day boundary; blocks are cut at 2 h
    with tempfile.TemporaryDirectory(prefix="edgecv-rule-cost-") as tmp:
        work = Path(tmp)
        backfill(work, devices, end)
        server = prometheus({"global": {"scrape_interval": "15s"}}, workdir=work,
                            extra_args=["--storage.tsdb.retention.time=100y"])
        with server.start():
            before = touched(server.url, BEFORE, end)
            after = touched(server.url, RECORD, end) + devices  # + the self-reference, one sample per device
            after += devices  # the alert reads one recorded sample per device
    scale = fleet / devices
    print(f"device-offline, samples touched per evaluation ({devices} devices, scaled to {fleet:,}):")
    print(f"  before (up[24h] over every target): {before:>8,} -> {before * scale:>15,.0f}")
    print(f"  after (last-seen record + alert):   {after:>8,} -> {after * scale:>15,.0f}")
    print(f"  per day at a 1 m evaluation interval: {before * scale * 1440:,.0f} -> {after * scale * 1440:,.0f}")
    print(f"  ratio after/before: {after / before:.5f}")


if __name__ == "__main__":
    main()
