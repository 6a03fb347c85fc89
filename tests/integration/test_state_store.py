"""The connector state store on both databases: its own short transactions by default, and, for the
built-in CA, the caller's transaction (its writes then commit or roll back with the job step)."""

from __future__ import annotations

import threading

import pytest

from sslclm.core.platform import Platform
from sslclm.workflows.state_store import DatabaseStateStore, StateConflictError, state_in_transaction


def test_each_call_commits_on_its_own(platform: Platform) -> None:
    store = DatabaseStateStore(platform.sessions, "ca-gateway:1", platform.clock)
    assert store.put_if_absent("issue/a", b"first") is None
    assert store.put_if_absent("issue/a", b"second") == b"first"
    store.put("cert/01", b"x")
    store.put("cert/02", b"y")
    assert store.scan("cert/") == [("cert/01", b"x"), ("cert/02", b"y")]
    assert store.scan("cert/", after="cert/01") == [("cert/02", b"y")]
    assert store.delete("cert/01") and not store.delete("cert/01")
    other = DatabaseStateStore(platform.sessions, "ca-gateway:2", platform.clock)
    assert other.get("issue/a") is None  # scopes do not see each other


def test_joined_writes_commit_or_roll_back_with_the_step(platform: Platform) -> None:
    store = DatabaseStateStore(platform.sessions, "ca-gateway:7", platform.clock)
    bystander = DatabaseStateStore(platform.sessions, "ca-gateway:8", platform.clock)
    with platform.sessions() as step:
        with state_in_transaction("ca-gateway:7", step):
            # Another scope is not joined: it commits at once. (First: on SQLite the step's write
            # below holds the database's one write lock until the step ends.)
            bystander.put("order/x", b"kept")
            assert store.put_if_absent("issue/k", b"certificate") is None
            assert store.get("issue/k") == b"certificate"  # visible inside the step's transaction
        step.rollback()  # the step failed
    assert store.get("issue/k") is None
    assert bystander.get("order/x") == b"kept"

    with platform.sessions() as step:
        with state_in_transaction("ca-gateway:7", step):
            store.put("issue/k", b"certificate")
            store.put("cert/1", b"pem")
        assert store.get("issue/k") is None  # outside the step, nothing until it commits
        step.commit()
    assert store.get("issue/k") == b"certificate" and store.get("cert/1") == b"pem"


def test_deferred_writes_go_in_together_and_a_key_taken_meanwhile_fails_the_step(platform: Platform) -> None:
    store = DatabaseStateStore(platform.sessions, "ca-gateway:9", platform.clock)
    store.put("issue/old", b"stored")
    with platform.sessions() as step:
        with state_in_transaction("ca-gateway:9", step, write_behind=True):
            assert store.put_if_absent("issue/a", b"one") is None
            assert store.put_if_absent("issue/a", b"two") == b"one"  # served from the pending writes
            assert store.get_many(["issue/a", "issue/old", "issue/none"]) == {
                "issue/a": b"one",
                "issue/old": b"stored",
            }
        step.commit()
    assert store.get_many(["issue/a", "issue/old"]) == {"issue/a": b"one", "issue/old": b"stored"}

    def other_writer() -> None:
        # Another thread is not joined to the step: its write commits at once.
        DatabaseStateStore(platform.sessions, "ca-gateway:9", platform.clock).put("issue/b", b"theirs")

    with platform.sessions() as step:
        with (
            pytest.raises(StateConflictError),
            state_in_transaction("ca-gateway:9", step, write_behind=True),
        ):
            assert store.put_if_absent("issue/b", b"mine") is None
            assert store.put_if_absent("issue/c", b"mine too") is None
            writer = threading.Thread(target=other_writer)
            writer.start()
            writer.join(30)
        step.rollback()
    # The step is tried again and then finds the other writer's value; nothing of it was kept.
    assert store.get("issue/b") == b"theirs" and store.get("issue/c") is None
