"""The model repository a container serves is the one the release build checked: sha256 of every file.

`edgecv release build` writes SHA256SUMS (sha256sum's format) beside the rendered model repository after
checking each artifact against its manifest. When the Triton container starts, this module checks the
files again before it hands over to tritonserver:

    python3 integrity.py --repo /models --metrics-port 8002 -- tritonserver --model-repository=/models ...

On a match it logs one line and execs the command. On any mismatch (a changed, missing or added file)
it refuses to serve: one ERROR line per file naming it and both digests, then it answers on the metrics
port with `edgecv_model_integrity_ok 0` (and 503 on Triton's readiness path) until it is replaced, so the
fleet's dashboards and the rollout analysis see a refusal instead of a crash loop.

Standard library only, Python 3.10: the same file runs in the Triton image, which has no edgecv install.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

SUMS = "SHA256SUMS"
log = logging.getLogger("edgecv.integrity")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digests(repo: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `repo` (SHA256SUMS itself excluded), sorted."""
    repo = Path(repo)
    files = sorted(p for p in repo.rglob("*") if p.is_file() and p.relative_to(repo).as_posix() != SUMS)
    return {p.relative_to(repo).as_posix(): file_sha256(p) for p in files}


def write_sums(repo: Path) -> Path:
    """SHA256SUMS for every file under `repo`, in `sha256sum -c`'s format."""
    path = Path(repo) / SUMS
    path.write_text("".join(f"{sha}  {rel}\n" for rel, sha in digests(repo).items()))
    return path


def read_sums(path: Path) -> dict[str, str]:
    out = {}
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        sha, sep, rel = line.partition("  ")
        if not sep or len(sha) != 64 or not rel:
            raise ValueError(f"{path}:{n}: not a sha256sum line: {line!r}")
        out[rel] = sha
    return out


def verify(repo: Path) -> list[str]:
    """Every difference between the files under `repo` and its SHA256SUMS, one sentence each."""
    sums_path = Path(repo) / SUMS
    if not sums_path.is_file():
        return [f"{sums_path}: missing: the release build writes it; without it nothing is checked"]
    try:
        expected = read_sums(sums_path)
    except ValueError as exc:
        return [str(exc)]
    found = digests(repo)
    problems = []
    for rel, sha in expected.items():
        if rel not in found:
            problems.append(f"{Path(repo) / rel}: missing (SHA256SUMS lists sha256 {sha})")
        elif found[rel] != sha:
            problems.append(f"{Path(repo) / rel}: sha256 {found[rel]}, expected {sha} (SHA256SUMS)")
    problems += [f"{Path(repo) / rel}: not in SHA256SUMS (added after the build)" for rel in found if rel not in expected]
    return problems


def metrics_text(problems: list[str]) -> bytes:
    lines = ["# HELP edgecv_model_integrity_ok 1 when every model file matches the release build's sha256",
             "# TYPE edgecv_model_integrity_ok gauge", f"edgecv_model_integrity_ok {0 if problems else 1}",
             "# HELP edgecv_model_integrity_problems files that differ from SHA256SUMS",
             "# TYPE edgecv_model_integrity_problems gauge", f"edgecv_model_integrity_problems {len(problems)}"]
    return ("\n".join(lines) + "\n").encode()


def serve_refusal(problems: list[str], port: int, host: str = "0.0.0.0") -> HTTPServer:
    """An HTTP server on the metrics port that says what is wrong: /metrics, and 503 everywhere else."""
    body = metrics_text(problems)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            ok = self.path.split("?", 1)[0] == "/metrics"
            data = body if ok else ("refusing to serve: " + "; ".join(problems) + "\n").encode()
            self.send_response(200 if ok else 503)
            self.send_header("Content-Type", "text/plain; version=0.0.4" if ok else "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    return HTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="check a model repository against SHA256SUMS, then exec a command")
    ap.add_argument("--repo", type=Path, required=True)
    ap.add_argument("--metrics-port", type=int, default=0, help="on a mismatch, answer here (0: exit 1 instead)")
    ap.add_argument("--write", action="store_true", help="write SHA256SUMS for the repository (build time)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- the server to exec when everything matches")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.write:
        log.info("wrote %s", write_sums(args.repo))
        return 0
    problems = verify(args.repo)
    if problems:
        for p in problems:
            log.error("refusing to serve: %s", p)
        if not args.metrics_port:
            return 1
        server = serve_refusal(problems, args.metrics_port)
        log.error("model repository %s does not match the release: serving edgecv_model_integrity_ok 0 on :%d",
                  args.repo, args.metrics_port)
        server.serve_forever()
        return 1
    log.info("model repository %s matches SHA256SUMS (%d files)", args.repo, len(read_sums(args.repo / SUMS)))
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if command:
        sys.stdout.flush()
        os.execvp(command[0], command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
