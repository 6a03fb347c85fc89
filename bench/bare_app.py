"""A bare FastAPI app: the list endpoint's SQL and rows with no platform, no auth, no models.

The throughput benchmark runs it beside the platform (``uvicorn --factory bench.bare_app:create``,
``BENCH_DATABASE_URL`` in the environment) to see what the platform's layers cost on top of the
query itself. It runs the same query as the first page of
``GET /api/v1/certificates?status=expiring&sort=not_after&limit=50`` and returns the same rows,
encoded with orjson as the platform does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Request
from sqlalchemy import JSON, Boolean, DateTime, Integer, bindparam, create_engine, text
from sqlalchemy.engine import Connection, Engine
from starlette.responses import Response

EXPIRING_DAYS = 30

LIST_SQL = """
SELECT c.id, c.fingerprint_sha256, c.common_name, c.subject, i.dn AS issuer, c.issuer_id, c.serial,
       c.not_before, c.not_after, c.key_algorithm, c.key_size, c.key_curve, c.signature_algorithm,
       c.sans, c.owner, c.team, c.environment, c.source, c.is_ca, c.self_signed, c.has_private_key,
       c.revoked_at, c.superseded_by_id, c.archived_at, c.created_at, c.updated_at
FROM certificates AS c JOIN issuers AS i ON i.id = c.issuer_id
WHERE c.archived_at IS NULL
  AND c.revoked_at IS NULL AND c.superseded_by_id IS NULL
  AND c.not_after >= :now AND c.not_after < :soon AND c.not_before <= :now
ORDER BY c.not_after, c.id
LIMIT :limit
"""


def list_statement() -> Any:
    """The SQL with typed parameters and result columns, so both backends bind and decode alike."""
    return (
        text(LIST_SQL)
        .bindparams(
            bindparam("now", type_=DateTime()),
            bindparam("soon", type_=DateTime()),
            bindparam("limit", type_=Integer()),
        )
        # By name (keywords): positional column objects would be matched to the result by position.
        .columns(
            sans=JSON(),
            is_ca=Boolean(),
            self_signed=Boolean(),
            has_private_key=Boolean(),
            not_before=DateTime(),
            not_after=DateTime(),
            created_at=DateTime(),
            updated_at=DateTime(),
            revoked_at=DateTime(),
            archived_at=DateTime(),
        )
    )


def connection(request: Request) -> Iterator[Connection]:
    engine: Engine = request.app.state.engine
    with engine.connect() as conn:
        yield conn


def create() -> FastAPI:
    url = os.environ["BENCH_DATABASE_URL"]
    kwargs: dict[str, Any] = {"pool_size": 10} if url.startswith("postgresql") else {}
    statement = list_statement()
    app = FastAPI()
    app.state.engine = create_engine(url, **kwargs)

    @app.get("/certificates")
    def certificates(conn: Annotated[Connection, Depends(connection)], limit: int = 50) -> Response:
        now = datetime.now(UTC).replace(tzinfo=None)  # stored as naive UTC
        params = {"now": now, "soon": now + timedelta(days=EXPIRING_DAYS), "limit": limit}
        items = [dict(row._mapping) for row in conn.execute(statement, params)]
        return Response(orjson.dumps({"items": items}), media_type="application/json")

    return app
