"""Alembic environment: migrations run programmatically (fleet.review.db.migrate) on a given connection,
or from the alembic CLI with `-x url=...` (e.g. to autogenerate a new revision)."""

from alembic import context
from sqlalchemy import create_engine

from fleet.review.models import Base

config = context.config
target_metadata = Base.metadata


def run(connection) -> None:
    # render_as_batch: SQLite can only ALTER tables by copying them; batch mode does that for us.
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("give the database: alembic -x url=sqlite:///path/review.db ...")
    with create_engine(url).connect() as conn:
        run(conn)
        conn.commit()
