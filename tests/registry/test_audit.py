"""The audit log primitives: sealing, verifying, tamper detection, keys."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import os
import random
import stat
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from robustops.errors import AuditError
from robustops.io import atomic_write_bytes
from robustops.registry import audit
from robustops.registry.audit import (
    GENESIS,
    AuditEvent,
    AuditKey,
    canonical_json,
    chain_link,
    default_key_path,
    format_time,
    key_id_of,
    public_key_from_hex,
    seal,
    verify_chain,
)

T0 = datetime(2026, 12, 7, 1, 2, 3, 123456, tzinfo=UTC)
ACTIONS = ["register", "gate", "approve", "alias", "rollback", "vulnerability", "evaluation"]


def build_chain(
    n: int, key: AuditKey, previous: AuditEvent | None = None, seed: int = 0
) -> list[AuditEvent]:
    """``n`` varied events after ``previous``: non-ASCII actors and payloads, nested payloads."""
    rng = random.Random(seed)
    out: list[AuditEvent] = []
    for i in range(n):
        payload = {
            "i": i,
            "note": rng.choice(["", "zoë", "line\nbreak", 'quote " and \\', "日本"]),
            "metrics": {"robust_accuracy": round(rng.random(), 4), "eps": [0.1, 0.3]},
        }
        previous = seal(
            previous,
            T0 + timedelta(seconds=i, microseconds=rng.randrange(10**6)),
            rng.choice(["alice", "bob", "ci-bot", "zoë"]),
            rng.choice(ACTIONS),
            f"mnist-cnn@{rng.randrange(1, 50)}",
            payload,
            key,
        )
        out.append(previous)
    return out


@pytest.fixture(scope="module")
def key() -> AuditKey:
    return AuditKey.generate()


@pytest.fixture(scope="module")
def chain(key: AuditKey) -> list[AuditEvent]:
    return build_chain(200, key)


# -- format and round trip ------------------------------------------------------------------------


def test_round_trip_fast_and_full(key: AuditKey) -> None:
    events = build_chain(50, key)
    assert [e.seq for e in events] == list(range(1, 51))
    assert events[0].prev == GENESIS
    for a, b in itertools.pairwise(events):
        assert b.prev == a.link() == chain_link(a.hash, a.signature)
    fast = verify_chain(events, key.public_keys())
    full = verify_chain(events, key.public_keys(), full=True, pinned=key.key_id)
    for verdict in (fast, full):
        assert verdict.ok, verdict.reason
        assert (verdict.events_checked, verdict.head_seq) == (50, 50)
        assert verdict.first_bad_seq is None
        assert verdict.head_hash == events[-1].hash
    assert fast.signatures_checked == 1
    assert full.signatures_checked == 50
    # The verdict is a checkpoint: still holds after more events are appended.
    longer = events + build_chain(5, key, previous=events[-1])
    assert verify_chain(longer, key.public_keys(), expect_head=(50, fast.head_hash or "")).ok


def test_event_format(key: AuditKey) -> None:
    event = seal(None, T0, "zoë", "register", "mnist-cnn@3", {"b": 1, "a": "x\ny"}, key)
    assert event.at == "2026-12-07T01:02:03.123456Z"
    assert event.payload == '{"a":"x\\ny","b":1}'
    assert event.payload_data() == {"a": "x\ny", "b": 1}
    body = event.body()
    assert body.startswith(b"robustops-audit-1\n")
    assert body.count(b"\n") == 8
    assert body.split(b"\n")[1:] == [
        b"1",
        event.at.encode(),
        "zoë".encode(),
        b"register",
        b"mnist-cnn@3",
        key.key_id.encode(),
        GENESIS.encode(),
        event.payload.encode(),
    ]
    assert len(event.hash) == 64 and len(event.signature) == 128
    assert event.key_id == key_id_of(key.public_raw)
    assert AuditEvent.from_row(SimpleNamespace(**event.as_row())) == event
    # Times in another zone are stored in UTC.
    plus2 = datetime(2026, 12, 7, 3, 2, 3, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(plus2) == "2026-12-07T01:02:03.123456Z"
    assert canonical_json({"é": [1.5, None, True]}) == '{"é":[1.5,null,true]}'


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("actor", "ali\nce"),
        ("action", "re\ngister"),
        ("subject", "m\n"),
        ("actor", ""),
        ("action", ""),
        ("payload", {"x": math.nan}),
        ("payload", {"x": object()}),
        ("payload", ["not", "a", "dict"]),
        ("at", datetime(2026, 1, 1)),  # naive
        ("at", "2026-12-07T01:02:03Z"),  # no microseconds
        ("at", "2026-02-30T01:02:03.000000Z"),  # no such day
        ("at", "2026-12-07T01:02:03.123456Z\n"),
    ],
)
def test_seal_refuses_ambiguous_or_invalid_fields(key: AuditKey, field: str, value: object) -> None:
    args: dict[str, object] = {
        "at": T0,
        "actor": "alice",
        "action": "register",
        "subject": "mnist-cnn@3",
        "payload": {},
    }
    args[field] = value
    with pytest.raises(AuditError):
        seal(None, key=key, **args)  # type: ignore[arg-type]


def test_any_object_with_the_fields_and_a_one_shot_stream(key: AuditKey) -> None:
    events = build_chain(30, key)
    rows = (SimpleNamespace(**e.as_row()) for e in events)  # a generator, read once
    verdict = verify_chain(rows, key.public_keys())
    assert verdict.ok and verdict.events_checked == 30


# -- tampering ------------------------------------------------------------------------------------

HEX = "0123456789abcdef"
TEXT = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 {}[]":,.@-_é日'
HEX_FIELDS = ("key_id", "prev", "hash", "signature")
STR_FIELDS = ("at", "actor", "action", "subject", "payload", *HEX_FIELDS)


def edit_one(event: AuditEvent, field: str, rng: random.Random) -> AuditEvent:
    """``event`` with one character of ``field`` (or one digit of ``seq``) changed to another
    valid one: hex fields stay lowercase hex, ``seq`` stays an int."""
    if field == "seq":
        digits = list(str(event.seq))
        i = rng.randrange(len(digits))
        digits[i] = rng.choice([d for d in "0123456789" if d != digits[i]])
        return dataclasses.replace(event, seq=int("".join(digits)))
    text = getattr(event, field)
    i = rng.randrange(len(text))
    alphabet = HEX if field in HEX_FIELDS else TEXT
    new = rng.choice([c for c in alphabet if c != text[i]])
    return dataclasses.replace(event, **{field: text[:i] + new + text[i + 1 :]})


def forge(
    chain: Sequence[AuditEvent], position: int, key: AuditKey, claim: str | None
) -> AuditEvent:
    """A well-formed event for ``position`` (after ``chain[position - 2]``), sealed with ``key``;
    with ``claim``, it claims that key id instead and carries a random signature."""
    previous = chain[position - 2] if position > 1 else None
    event = seal(previous, T0, "mallory", "approve", "mnist-cnn:production", {"x": 1}, key)
    if claim is None:
        return event
    digest = hashlib.sha256(
        audit.event_body(
            event.seq,
            event.at,
            event.actor,
            event.action,
            event.subject,
            claim,
            event.prev,
            event.payload,
        )
    ).hexdigest()
    return dataclasses.replace(
        event, key_id=claim, hash=digest, signature=random.Random(position).randbytes(64).hex()
    )


def first_difference(original: Sequence[AuditEvent], mutated: Sequence[AuditEvent]) -> int:
    """The first position (from 1) where ``mutated`` holds something else than ``original``."""
    for i, event in enumerate(mutated):
        if i >= len(original) or event != original[i]:
            return i + 1
    raise AssertionError("no difference")


def test_ten_thousand_random_tamperings_are_all_detected(
    key: AuditKey, chain: list[AuditEvent]
) -> None:
    """10 000 seeded mutations, each on a fresh copy of a 200-event chain: single-character edits
    of any field of any event, deletions, swaps, duplicated and forged insertions. Every one is
    detected in fast mode, at the position the docstring of ``verify_chain`` defines:

    * the first position where the tampered list differs from the genuine one, except
    * a (well-formed) signature edit of a non-head event *k*: *k* + 1 in fast mode, *k* with
      ``full`` (the signature is bound by the next event's ``prev``);
    * a forged event at position *p* claiming the genuine key id with a bad signature: *p* + 1
      in fast mode (the next event repeats seq *p*), *p* with ``full`` and for a forged head;
    * deleting the head leaves a valid shorter chain: not detectable without a checkpoint,
      detected at seq 200 with ``expect_head=(200, hash)``.

    Every 50th mutation is also verified with ``full=True``.
    """
    rng = random.Random(20261207)
    keys = key.public_keys()
    n = len(chain)
    checkpoint = (n, chain[-1].hash)
    mallory = AuditKey.generate()
    kinds: dict[str, int] = {}
    for trial in range(10_000):
        events = list(chain)
        kind = rng.choices(["edit", "delete", "swap", "duplicate", "forge"], [60, 10, 10, 10, 10])[
            0
        ]
        fast_at = full_at = None
        if kind == "edit":
            k = rng.randrange(1, n + 1)
            field = rng.choice(["seq", *STR_FIELDS])
            events[k - 1] = edit_one(events[k - 1], field, rng)
            kind = f"edit {field}"
            if field == "signature" and k < n:
                fast_at, full_at = k + 1, k
        elif kind == "delete":
            k = rng.randrange(1, n + 1)
            del events[k - 1]
            if k == n:
                kind = "delete head"
                assert verify_chain(events, keys).ok  # truncation is invisible without it
                verdict = verify_chain(events, keys, expect_head=checkpoint)
                assert not verdict.ok and verdict.first_bad_seq == n, verdict
                assert "deleted from the end" in verdict.reason
                kinds[kind] = kinds.get(kind, 0) + 1
                continue
        elif kind == "swap":
            i, j = sorted(rng.sample(range(n), 2))
            events[i], events[j] = events[j], events[i]
        elif kind == "duplicate":
            k = rng.randrange(n)
            events.insert(rng.randrange(n + 1), events[k])
        else:
            p = rng.randrange(1, n + 2)
            claims = rng.random() < 0.5
            events.insert(p - 1, forge(chain, p, mallory, key.key_id if claims else None))
            kind = "forge, claims the key" if claims else "forge, own key"
            if claims and p <= n:
                fast_at, full_at = p + 1, p
        expected = first_difference(chain, events)
        fast_at = fast_at or expected
        full_at = full_at or expected
        verdict = verify_chain(events, keys)
        assert not verdict.ok, (trial, kind, verdict)
        assert verdict.first_bad_seq == fast_at, (trial, kind, verdict)
        assert verdict.events_checked == verdict.head_seq == fast_at - 1
        if trial % 50 == 0:
            verdict = verify_chain(events, keys, full=True)
            assert not verdict.ok and verdict.first_bad_seq == full_at, (trial, kind, verdict)
        kinds[kind] = kinds.get(kind, 0) + 1
    assert sum(kinds.values()) == 10_000
    assert all(kinds.get(f"edit {f}", 0) > 300 for f in ["seq", *STR_FIELDS]), kinds
    assert kinds["delete head"] > 0, kinds


def test_reasons_name_the_kind_of_tampering(key: AuditKey, chain: list[AuditEvent]) -> None:
    keys = key.public_keys()
    deleted = chain[:10] + chain[12:]
    assert "seq 11..12 missing, events were deleted" in verify_chain(deleted, keys).reason
    swapped = list(chain)
    swapped[10], swapped[20] = swapped[20], swapped[10]
    assert "events were reordered" in verify_chain(swapped, keys).reason
    backwards = [*chain[:10], chain[5], *chain[10:]]
    assert "events were reordered" in verify_chain(backwards, keys).reason
    duplicated = chain[:10] + chain[9:]
    assert "inserted" in verify_chain(duplicated, keys).reason
    edited = list(chain)
    edited[7] = dataclasses.replace(edited[7], actor="root")
    verdict = verify_chain(edited, keys)
    assert verdict.first_bad_seq == 8 and "hash does not match its content" in verdict.reason


@pytest.mark.parametrize("signature", ["upper", "short", "not hex", "spaced"])
def test_a_malformed_signature_fails_its_own_event(
    key: AuditKey, chain: list[AuditEvent], signature: str
) -> None:
    """A signature edited to something that is not 128 lowercase hex digits fails where it is,
    even when its bytes are unchanged (``bytes.fromhex`` ignores case and spaces)."""
    events = list(chain)
    sig = events[9].signature
    edits = {
        "upper": sig.upper(),
        "short": sig[:-2],
        "not hex": sig[:-1] + "g",
        "spaced": sig[:64] + " " + sig[64:],
    }
    events[9] = dataclasses.replace(events[9], signature=edits[signature])
    verdict = verify_chain(events, key.public_keys())
    assert not verdict.ok and verdict.first_bad_seq == 10, verdict


def rehash_from(chain: list[AuditEvent], k: int, payload: str) -> list[AuditEvent]:
    """The chain with event ``k``'s payload changed and every hash and link from there recomputed, the
    signatures kept (what a forger without the key can do)."""
    out = chain[: k - 1]
    for event in chain[k - 1 :]:
        if event.seq == k:
            event = dataclasses.replace(event, payload=payload)
        if out:
            event = dataclasses.replace(event, prev=out[-1].link())
        out.append(dataclasses.replace(event, hash=hashlib.sha256(event.body()).hexdigest()))
    return out


def test_a_rehashed_chain_is_caught_by_the_head_signature(
    key: AuditKey, chain: list[AuditEvent]
) -> None:
    """Every hash and link is consistent, so only a signature fails: fast mode checks the head's,
    then scans to name the first bad one; a one-shot stream cannot be scanned twice."""
    forged = rehash_from(chain, 120, payload='{"approved":true}')
    keys = key.public_keys()
    verdict = verify_chain(forged, keys)
    assert not verdict.ok and verdict.first_bad_seq == 120, verdict
    assert "re-hashed" in verdict.reason
    assert verify_chain(forged, keys, full=True).first_bad_seq == 120
    once = verify_chain(iter(forged), keys)
    assert not once.ok and once.first_bad_seq == 200 and "full=True" in once.reason


def test_rewritten_chain_with_a_new_key(key: AuditKey, chain: list[AuditEvent]) -> None:
    """Re-sealing every event with another key gives a valid chain. Pinning the genuine key id
    refuses it; unpinned, it passes exactly when the new key's public key is supplied: trusting
    a key is what ``public_keys`` means, and pinning is what stops a rewrite."""
    other = AuditKey.generate()
    rewritten: list[AuditEvent] = []
    for e in chain:
        payload = e.payload_data()
        if e.seq == 100:
            payload["approved"] = True
        rewritten.append(
            seal(
                rewritten[-1] if rewritten else None,
                e.at,
                e.actor,
                e.action,
                e.subject,
                payload,
                other,
            )
        )
    both = {**key.public_keys(), **other.public_keys()}
    for full in (False, True):
        pinned = verify_chain(rewritten, both, pinned=key.key_id, full=full)
        assert not pinned.ok and pinned.first_bad_seq == 1, pinned
        assert "pinned" in pinned.reason
        unknown = verify_chain(rewritten, key.public_keys(), full=full)
        assert (
            not unknown.ok
            and unknown.first_bad_seq == 1
            and "not among the known" in unknown.reason
        )
        assert verify_chain(rewritten, both, full=full).ok
    # A checkpoint of the genuine chain catches it too.
    verdict = verify_chain(rewritten, both, expect_head=(200, chain[-1].hash))
    assert not verdict.ok and verdict.first_bad_seq == 200 and "checkpoint" in verdict.reason


def test_key_rotation_and_a_public_key_that_is_not_the_key_id(key: AuditKey) -> None:
    other = AuditKey.generate()
    first = build_chain(20, key)
    events = first + build_chain(20, other, previous=first[-1], seed=1)
    both = {**key.public_keys(), **other.public_keys()}
    assert verify_chain(events, both, full=True).ok
    assert verify_chain(events, both, pinned=key.key_id).first_bad_seq == 21
    wrong = {key.key_id: other.public_raw, other.key_id: other.public_raw}
    verdict = verify_chain(events, wrong)
    assert verdict.first_bad_seq == 1 and "does not hash to that id" in verdict.reason


def test_truncation_needs_a_checkpoint(key: AuditKey, chain: list[AuditEvent]) -> None:
    keys = key.public_keys()
    checkpoint = (200, chain[-1].hash)
    for kept in (199, 150, 1):
        assert verify_chain(chain[:kept], keys).ok
        verdict = verify_chain(chain[:kept], keys, expect_head=checkpoint)
        assert not verdict.ok and verdict.first_bad_seq == kept + 1, verdict
        assert verdict.head_seq == kept and verdict.head_hash == chain[kept - 1].hash
    assert verify_chain([], keys).ok
    assert verify_chain([], keys, expect_head=checkpoint).first_bad_seq == 1
    with pytest.raises(AuditError):
        verify_chain(chain, keys, expect_head=(0, chain[0].hash))


def test_malformed_rows_are_verdicts_not_exceptions(key: AuditKey, chain: list[AuditEvent]) -> None:
    keys = key.public_keys()
    rows: list[object] = [SimpleNamespace(**e.as_row()) for e in chain[:5]]
    del rows[2].payload  # type: ignore[attr-defined]
    verdict = verify_chain(rows, keys)  # type: ignore[arg-type]
    assert verdict.first_bad_seq == 3 and "malformed" in verdict.reason
    stringly = [SimpleNamespace(**{**e.as_row(), "seq": str(e.seq)}) for e in chain[:3]]
    assert verify_chain(stringly, keys).first_bad_seq == 1  # type: ignore[arg-type]


# -- keys -----------------------------------------------------------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_key_file_created_0600_and_refused_when_group_readable(tmp_path: Path) -> None:
    path = tmp_path / "home" / "keys" / "audit-ed25519.pem"
    created = AuditKey.load_or_create(path)
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) == 0o700
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    assert AuditKey.load_or_create(path).key_id == created.key_id
    assert AuditKey.load(path).key_id == created.key_id
    path.chmod(0o644)
    for load in (AuditKey.load, AuditKey.load_or_create):
        with pytest.raises(AuditError, match=r"mode 0644.*chmod 600"):
            load(path)
    path.chmod(0o604)
    with pytest.raises(AuditError, match="group or others"):
        AuditKey.load(path)
    path.chmod(0o400)
    assert AuditKey.load(path).key_id == created.key_id


def test_bad_key_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(AuditError, match="does not exist"):
        AuditKey.load(missing)
    private = Ed25519PrivateKey.generate()
    files = {
        "garbage.pem": b"not a key",
        "encrypted.pem": private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        ),
        "ec.pem": ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    }
    for name, data in files.items():
        atomic_write_bytes(tmp_path / name, data, mode=0o600)
        with pytest.raises(AuditError):
            AuditKey.load(tmp_path / name)
    with pytest.raises(AuditError, match="not a regular file"):
        AuditKey.load(tmp_path)


def test_concurrent_creation_keeps_the_first_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes both find no key: the second to finish creating loads the first's key
    instead of replacing it (events already signed with it stay verifiable)."""
    path = tmp_path / "audit.pem"
    first = AuditKey.load_or_create(path)
    real = audit._read_key_file
    reads: list[Path] = []

    def racing(p: Path) -> bytes | None:  # the first read happens before the other process wrote
        reads.append(p)
        return None if len(reads) == 1 else real(p)

    monkeypatch.setattr(audit, "_read_key_file", racing)
    second = AuditKey.load_or_create(path)
    assert second.key_id == first.key_id
    assert [p.name for p in tmp_path.iterdir()] == ["audit.pem"]
    with pytest.raises(FileExistsError):
        atomic_write_bytes(path, b"other", exclusive=True)
    assert AuditKey.load(path).key_id == first.key_id


def test_default_key_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(audit.KEY_ENV_VAR, raising=False)
    assert default_key_path(tmp_path) == tmp_path / "keys" / "audit-ed25519.pem"
    monkeypatch.setenv(audit.KEY_ENV_VAR, str(tmp_path / "elsewhere.pem"))
    assert default_key_path(tmp_path) == tmp_path / "elsewhere.pem"


def test_public_key_from_hex(key: AuditKey) -> None:
    raw = public_key_from_hex(key.public_hex)
    assert raw == key.public_raw and key_id_of(raw) == key.key_id
    for bad in (key.public_hex.upper(), key.public_hex[:-2], "zz" * 32, 42):
        with pytest.raises(AuditError):
            public_key_from_hex(bad)  # type: ignore[arg-type]
