"""The review service: a keyboard-first web queue over flagged items (low confidence, alerts, drift, random).

Modules, one job each:
- `settings`  the service's validated configuration;
- `db`        engines (SQLite default, PostgreSQL by URL), transactions, Alembic migrations at start-up;
- `models`    the SQLAlchemy tables (reviewers, device tokens, items, their classes, the audit log);
- `schemas`   pydantic shapes of what comes in (ingested items, corrections);
- `auth`      argon2 password hashes, device tokens, session and CSRF checks;
- `ingest`    storing a flagged item idempotently, with its image;
- `queue`     claiming (one reviewer per item, claims expire), skipping, listing, history;
- `actions`   approve / reject / correct, undo, the audit trail;
- `stats`     progress against the daily quota, throughput, the correction rate;
- `metrics`   Prometheus metrics (edgecv_review_*);
- `export`    reviewed items as COCO JSON for `edgecv retrain export`;
- `web`, `pages`, `api`  the ASGI app (FastAPI): server-rendered pages and the JSON API;
- `cli`       `edgecv review serve|add-user|add-token|export`.
"""
