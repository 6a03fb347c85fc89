"""The running platform's shared state: settings, database, envelope key and clock.

Built once per process (by ``create_app``, the CLI or a worker), never at import time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from sslclm.core.clock import Clock, utcnow
from sslclm.core.config import Settings
from sslclm.core.db import create_db_engine, make_session_factory
from sslclm.core.keys import load_envelope
from sslclm.core.migrate import upgrade_database
from sslclm.pki.envelope import Envelope


@dataclass
class Platform:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    envelope: Envelope
    clock: Clock = field(default=utcnow)

    @classmethod
    def open(cls, settings: Settings, *, migrate: bool = True, clock: Clock = utcnow) -> Platform:
        if settings.is_sqlite:
            settings.ensure_home()
        engine = create_db_engine(settings.resolved_database_url)
        if migrate:
            upgrade_database(engine)
        return cls(
            settings=settings,
            engine=engine,
            sessions=make_session_factory(engine),
            envelope=load_envelope(settings),
            clock=clock,
        )

    def close(self) -> None:
        self.engine.dispose()
