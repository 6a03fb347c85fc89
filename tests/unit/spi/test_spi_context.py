"""The context's building blocks: the in-memory state store and sealing over the real envelope."""

from __future__ import annotations

import threading

import pytest

from sslclm.errors import IntegrityError
from sslclm.pki.envelope import Envelope, generate_kek
from sslclm.spi import EnvelopeSealer, MemoryStateStore, SecretSealer, StateStore


def test_memory_store_basic_operations() -> None:
    store = MemoryStateStore()
    assert isinstance(store, StateStore)
    assert store.get("a") is None
    store.put("a", b"1")
    assert store.get("a") == b"1"
    assert store.put_if_absent("a", b"2") == b"1"
    assert store.get("a") == b"1"
    assert store.put_if_absent("b", b"3") is None
    assert store.delete("a") is True
    assert store.delete("a") is False


def test_memory_store_scans_in_key_order_with_a_cursor() -> None:
    store = MemoryStateStore()
    for key in ("x/3", "x/1", "y/1", "x/2", "x/4"):
        store.put(key, key.encode())
    first = store.scan("x/", limit=2)
    assert [k for k, _ in first] == ["x/1", "x/2"]
    rest = store.scan("x/", after=first[-1][0], limit=10)
    assert [k for k, _ in rest] == ["x/3", "x/4"]
    assert store.scan("z/") == []


def test_put_if_absent_has_exactly_one_winner_across_threads() -> None:
    store = MemoryStateStore()
    winners: list[int] = []
    barrier = threading.Barrier(16)

    def race(n: int) -> None:
        barrier.wait()
        if store.put_if_absent("once", str(n).encode()) is None:
            winners.append(n)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert store.get("once") == str(winners[0]).encode()


def test_sealed_values_are_bound_to_purpose_scope_and_key() -> None:
    envelope = Envelope(generate_kek())
    sealer = EnvelopeSealer(envelope, "conn-1")
    assert isinstance(sealer, SecretSealer)
    sealed = sealer.seal(b"ca private key", "root-key")
    assert b"ca private key" not in sealed
    assert sealer.unseal(sealed, "root-key") == b"ca private key"
    with pytest.raises(IntegrityError):
        sealer.unseal(sealed, "issuing-key")
    with pytest.raises(IntegrityError):
        EnvelopeSealer(envelope, "conn-2").unseal(sealed, "root-key")
    with pytest.raises(IntegrityError):
        EnvelopeSealer(Envelope(generate_kek()), "conn-1").unseal(sealed, "root-key")
