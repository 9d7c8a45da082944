"""The review service: a keyboard-first web queue over flagged items (low confidence, alerts, drift, random).

Modules, one job each:
- `settings`  the service's validated configuration;
- `storage`   private data files (0600/0700) and the session signing key, kept outside the database;
- `db`        engines (SQLite default, PostgreSQL by URL), transactions, Alembic migrations at start-up;
- `models`    the SQLAlchemy tables (reviewers, device tokens, items, their classes, the audit log);
- `schemas`   pydantic shapes of what comes in and goes out (the ingest wire format is fleet/spec/review_wire.py);
- `auth`      argon2 password hashes, server-side sessions, sign-in throttles, device tokens, CSRF;
- `deps`      FastAPI dependencies as `Annotated` aliases (ServiceDep, ReviewerDep, DeviceDep);
- `ingest`    storing a flagged item idempotently, with its image (tokens bound to devices, clips checked);
- `fetch`     fetching a remote image for export without SSRF (allow-list, no loopback/link-local);
- `thumbs`    queue thumbnails;
- `queue`     claiming (one reviewer per item, claims expire), skipping, listing, history;
- `actions`   approve / reject / correct, undo, the audit trail;
- `stats`     progress against the daily quota, throughput, the correction rate;
- `metrics`   Prometheus metrics (edgecv_review_*);
- `export`    reviewed items as COCO JSON for `edgecv retrain export`;
- `web`, `pages`, `api`  the ASGI app (FastAPI): body caps, security headers, pages and the JSON API;
- `demo`      `edgecv review demo`: a queue filled by a real app run (Triton, the sample video);
- `cli`       `edgecv review serve|demo|add-user|disable-user|enable-user|add-token|revoke-token|ingest-evidence|export`.
"""
