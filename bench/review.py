"""Review service latency: actions under 20 concurrent reviewers, and the queue page over 10,000 queued items.

    .venv/bin/python bench/review.py [--items 10000] [--reviewers 20] [--actions 20] [--think 1.0]
                                     [--backends sqlite,postgresql]

Per backend (SQLite file; PostgreSQL from Debian's server on 127.0.0.1 when installed), a real server
(`edgecv review serve`: uvicorn, one process) is loaded with N pending items, then:
- the queue page (first page, filter menus with counts, total) is fetched 30 times, with no other load;
- 20 reviewer threads sign in and each loop `claim-next`, then a decision (approve and correct,
  alternating), then "look" at the next item for a random think time (mean --think s; real reviewers
  take several seconds per item, so this is a heavier load than 20 people);
- saturation: the same 20 threads with no think time at all (reported: actions/s and p95; no goal);
- the server process's CPU time per claim + decision (psutil), which a busy machine does not inflate;
- the server's memory (RSS) before and after 100 unauthenticated POSTs that each declare a 200 MB body
  (the token is checked before the body is read: memory must stay flat; no baseline, a bound).
Latency is server-side: the `Server-Timing: app;dur=` header each response carries (request in,
response headers out, measured inside the server), so the client's own Python time is left out.

Baseline, measured in the same run on the same data and workload: the same server on a schema without
the secondary indexes (claim query, expiry sweep, queue page and counts must scan and sort the items
table). The ratio says how many times better ours is (baseline ms / ours ms; for rates ours / baseline).
Goals: action p95 < 50 ms, queue page p95 < 200 ms. Server-side times are wall-clock: on a shared,
busy machine they include waiting for a CPU; the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests
from argon2 import PasswordHasher
from sqlalchemy import insert, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fleet.local import postgres as localpg  # noqa: E402
from fleet.local.procs import Service, free_port, http_ok  # noqa: E402
from fleet.review.db import Database  # noqa: E402
from fleet.review.models import PRIORITY, Base, Item, ItemClass, Reviewer  # noqa: E402

PASSWORD = "bench password"
SECONDARY_INDEXES = [ix.name for t in Base.metadata.sorted_tables for ix in t.indexes]


def p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20)[-1] if len(xs) >= 2 else xs[0]


def load(url: str, data: Path, n_items: int, n_reviewers: int, indexed: bool) -> None:
    db = Database(url)
    db.migrate()
    (data / "images").mkdir(parents=True, exist_ok=True)
    (data / "images" / "bench.jpg").write_bytes(b"\xff\xd8\xff\xd9")
    now = time.time()
    reasons = list(PRIORITY)
    rows = [{
        "id": f"it-{i:06d}", "reason": reasons[i % 4], "priority": PRIORITY[reasons[i % 4]], "site": f"site-{i % 7}",
        "device": f"jetson-{i % 50:02d}", "camera": f"cam-{i % 5}", "model": f"detector@1.{i % 3}.0",
        "classes": ["person"], "width": 640, "height": 480, "image_file": "bench.jpg",
        "predictions": [{"box": [10, 10, 100, 200], "class": "person", "score": 0.4, "track_id": None}],
        "created_at": now - n_items + i, "status": "pending",
    } for i in range(n_items)]
    pw = PasswordHasher().hash(PASSWORD)
    with db.write() as s:
        s.execute(insert(Item), rows)
        s.execute(insert(ItemClass), [{"item_id": r["id"], "class_name": "person"} for r in rows])
        s.execute(insert(Reviewer), [{"username": f"r{k:02d}", "password_hash": pw, "daily_quota": 500,
                                      "active": True, "created_at": now} for k in range(n_reviewers)])
    if not indexed:
        with db.engine.begin() as c:
            for name in SECONDARY_INDEXES:
                c.execute(text(f"DROP INDEX {name}"))
    # Statistics (and on PostgreSQL the visibility map), as autovacuum / a long-running database would have.
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text("VACUUM ANALYZE" if db.is_postgres else "ANALYZE"))
    db.dispose()


def server(url: str, data: Path) -> Service:
    port = free_port()

    argv = [sys.executable, "-m", "fleet.cli", "review", "serve", "--db", url, "--data-dir", str(data),
            "--port", str(port), "--classes", "person,car"]
    healthz = f"http://127.0.0.1:{port}/healthz"
    return Service("review-bench", argv, port, workdir=data, ready=lambda: http_ok(healthz), start_timeout=60)


def sign_in(base: str, username: str) -> tuple[requests.Session, str]:
    http = requests.Session()
    page = http.get(f"{base}/login").text
    token = page.split('name="csrf-token" content="')[1].split('"')[0]
    r = http.post(f"{base}/login", data={"username": username, "password": PASSWORD, "csrf_token": token})
    r.raise_for_status()
    token = r.text.split('name="csrf-token" content="')[1].split('"')[0]
    return http, token


def server_ms(r: requests.Response) -> float:
    return float(r.headers["server-timing"].split("dur=")[1])


def reviewers(base: str, sessions: list, actions: int, think: float) -> dict[str, list[float]]:
    n = len(sessions)
    out: dict[str, list[float]] = {"claim": [], "decide": [], "wall": []}
    lock = threading.Lock()
    barrier = threading.Barrier(n)

    def work(k: int) -> None:
        http, token = sessions[k]
        headers = {"X-CSRF-Token": token}
        rng = random.Random(k)
        barrier.wait()
        start = time.perf_counter()
        for a in range(actions):
            if think:
                time.sleep(rng.uniform(0.5, 1.5) * think)
            r = http.post(f"{base}/api/claim-next", headers=headers)
            r.raise_for_status()
            claim = server_ms(r)
            item_id = r.json()["item"]["id"]
            if a % 2:
                r = http.post(f"{base}/api/items/{item_id}/correct", headers=headers,
                              json={"boxes": [{"box": [12, 10, 110, 200], "class": "car"}]})
            else:
                r = http.post(f"{base}/api/items/{item_id}/approve", headers=headers)
            r.raise_for_status()
            with lock:
                out["claim"].append(claim)
                out["decide"].append(server_ms(r))
        with lock:
            out["wall"].append(time.perf_counter() - start)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def queue_page(base: str, times: int = 30) -> tuple[list[float], list[float]]:
    http, _ = sign_in(base, "r00")
    srv, wall = [], []
    for _ in range(times):
        start = time.perf_counter()
        r = http.get(f"{base}/queue")
        wall.append((time.perf_counter() - start) * 1000)
        r.raise_for_status()
        assert 'id="total">' in r.text
        srv.append(server_ms(r))
    return srv, wall


def run_variant(url: str, n_items: int, n_reviewers: int, actions: int, think: float,
                indexed: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="edgecv-review-bench-") as tmp:
        data = Path(tmp)
        load(url, data, n_items, n_reviewers, indexed)
        with server(url, data) as svc:
            page_srv, page_wall = queue_page(svc.url)  # the full queue of N items
            sessions = [sign_in(svc.url, f"r{k:02d}") for k in range(n_reviewers)]
            proc = psutil.Process(svc.proc.pid)
            cpu = sum(proc.cpu_times()[:2])
            acts = reviewers(svc.url, sessions, actions, think)
            cpu_ms = (sum(proc.cpu_times()[:2]) - cpu) * 1000 / len(acts["decide"])
            flat = reviewers(svc.url, sessions, max(5, actions // 2), 0.0)
            rss_before, rss_after = oversized_posts(svc.port, svc.proc.pid)
    return {"rss_before": rss_before, "rss_after": rss_after,"claim_p95": p95(acts["claim"]), "decide_p95": p95(acts["decide"]),
            "decide_p50": statistics.median(acts["decide"]), "page_p50": statistics.median(page_srv),
            "page_p95": p95(page_srv), "page_wall_p95": p95(page_wall),
            "sat_decide_p95": p95(flat["decide"]), "sat_claim_p95": p95(flat["claim"]),
            "sat_rate": len(flat["decide"]) / max(flat["wall"]), "cpu_ms": cpu_ms}


def oversized_posts(port: int, pid: int, n: int = 100) -> tuple[float, float]:
    """RSS (MiB) of the server before and after n unauthenticated POSTs declaring 200 MB (256 KB sent each)."""
    import socket

    proc = psutil.Process(pid)
    before = proc.memory_info().rss / 2**20
    head = (b"POST /api/items HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 209715200\r\n\r\n")
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head)
            try:
                sock.sendall(b"[" * (256 << 10))
            except OSError:
                pass
            assert b" 401 " in sock.recv(100), "an unauthenticated POST must be refused at once"
    return before, proc.memory_info().rss / 2**20


def fresh_pg_database(pg: localpg.LocalPostgres, name: str) -> str:
    from sqlalchemy import create_engine

    admin = create_engine(pg.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return pg.url.rsplit("/", 1)[0] + f"/{name}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--reviewers", type=int, default=20)
    ap.add_argument("--actions", type=int, default=20, help="claim + decision rounds per reviewer")
    ap.add_argument("--think", type=float, default=1.0, help="mean seconds a reviewer looks at an item")
    ap.add_argument("--backends", default="sqlite,postgresql")
    args = ap.parse_args()

    results: dict[tuple[str, str], dict] = {}
    pg = None
    try:
        for backend in args.backends.split(","):
            if backend == "postgresql":
                if not localpg.available():
                    print("postgresql: server binaries not installed, skipped")
                    continue
                pg = localpg.LocalPostgres().start()
            for variant, indexed in (("ours", True), ("baseline", False)):
                db_dir = Path(tempfile.mkdtemp(prefix="edgecv-review-bench-db-"))
                url = f"sqlite:///{db_dir}/review.db" if backend == "sqlite" else fresh_pg_database(pg, f"bench_{variant}")
                started = time.time()
                try:
                    results[backend, variant] = run_variant(url, args.items, args.reviewers, args.actions, args.think,
                                                            indexed)
                finally:
                    shutil.rmtree(db_dir, ignore_errors=True)
                print(f"{backend:10s} {variant:8s} done in {time.time() - started:.0f}s", flush=True)
            if pg:
                pg.stop()
                pg = None
    finally:
        if pg:
            pg.stop()

    print(f"\nreview service, {args.items} queued items, {args.reviewers} concurrent reviewers x {args.actions} "
          f"actions (think {args.think} s); server-side ms (Server-Timing)")
    print("baseline = same server and workload on a schema without secondary indexes")
    print(f"load average during the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs\n")
    head = f"{'backend':10s} {'metric':30s} {'ours':>9s} {'baseline':>9s} {'ratio':>7s}  goal"
    print(head)
    print("-" * len(head))
    metrics = [("claim-next p95", "claim_p95", "< 50 ms"), ("decision p95", "decide_p95", "< 50 ms"),
               ("decision p50", "decide_p50", ""), ("queue page p50", "page_p50", ""),
               ("queue page p95", "page_p95", "< 200 ms"), ("queue page p95 (client)", "page_wall_p95", ""),
               ("saturated: claim p95", "sat_claim_p95", ""), ("saturated: decision p95", "sat_decide_p95", ""),
               ("saturated: decisions/s", "sat_rate", ""),
               ("server CPU ms / claim+decision", "cpu_ms", "")]
    for backend in dict.fromkeys(b for b, _ in results):
        ours, base = results[backend, "ours"], results[backend, "baseline"]
        for label, key, goal in metrics:
            ok = ""
            if goal:
                ok = "ok" if ours[key] < float(goal.split()[1]) else "MISSED"
            ratio = ours[key] / base[key] if key == "sat_rate" else base[key] / ours[key]  # > 1: ours better
            print(f"{backend:10s} {label:30s} {ours[key]:9.1f} {base[key]:9.1f} {ratio:6.1f}x  {goal} {ok}")
        grew = ours["rss_after"] - ours["rss_before"]
        print(f"{backend:10s} {'RSS after 100 x 200 MB unauth.':30s} {ours['rss_after']:9.1f} MiB (before "
              f"{ours['rss_before']:.1f}, {grew:+.1f})  goal: flat (< +20 MiB) {'ok' if grew < 20 else 'MISSED'}")


if __name__ == "__main__":
    main()
