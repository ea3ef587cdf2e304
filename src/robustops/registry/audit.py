"""The registry's tamper-evident audit log: sealing events into a signed hash chain and
verifying a chain at hashing speed.

Every state change of the registry is one row of ``audit_events`` (all text except ``seq``):

========== =================================================================================
seq        1, 2, 3, … with no gap (int)
at         when, UTC, ``2026-12-07T01:02:03.123456Z`` (always microseconds, always ``Z``)
actor      the principal who acted
action     a short word: ``register``, ``gate``, ``approve``, ``alias``, ``rollback``, …
subject    what it acted on, e.g. ``mnist-cnn@3`` or ``mnist-cnn:production``
payload    the details: a JSON object as :func:`canonical_json` text
key_id     lowercase hex SHA-256 of the signer's raw 32-byte Ed25519 public key
prev       the link to the previous event (below); 64 ``0`` for event 1
hash       lowercase hex SHA-256 of the event's body (below)
signature  lowercase hex of the 64-byte Ed25519 signature over the 32 raw bytes of ``hash``
========== =================================================================================

The **body** of an event is the UTF-8 encoding of ``robustops-audit-1``, ``seq``, ``at``,
``actor``, ``action``, ``subject``, ``key_id``, ``prev`` and ``payload`` joined by ``"\\n"``.
No field contains a newline (sealing refuses one; canonical JSON escapes it), so the body
determines every field. The **link** of an event, stored as the next event's ``prev``, is
``sha256(raw hash ‖ raw signature)``: it commits to the predecessor's signature too.

Consequences, which make verification run at hashing speed (:func:`verify_chain`):

* editing any byte of any event other than the last breaks its own hash (a content field,
  ``prev`` or ``hash``) or the next event's ``prev`` (its ``signature``); editing ``seq``,
  deleting, inserting or swapping events breaks the ``1, 2, 3, …`` numbering or a link;
* so one Ed25519 check, of the last event (the *head*), authenticates the whole chain: whoever
  signed the head vouched for every byte before it. ``full=True`` checks every signature
  instead (needed to hold each event to its own signer when several keys signed the chain);
* deleting events from the *end* leaves a valid shorter chain. Only a checkpoint recorded
  elsewhere detects it: pass the ``(head_seq, head_hash)`` of an earlier verdict as
  ``expect_head``;
* re-sealing the whole chain with another key yields a valid chain: pass the expected signer's
  key id as ``pinned`` (or supply only trusted public keys) to refuse it.

Keys: :class:`AuditKey` holds the private key, an unencrypted PKCS#8 PEM file created with mode
0600 (:meth:`AuditKey.load_or_create`; one readable by group or others is refused), at
:func:`default_key_path` unless the caller names one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from robustops.errors import AuditError, short_repr
from robustops.io import atomic_write_bytes

__all__ = [
    "FORMAT_VERSION",
    "GENESIS",
    "KEY_ENV_VAR",
    "AuditEvent",
    "AuditKey",
    "AuditVerdict",
    "EventLike",
    "canonical_json",
    "chain_link",
    "default_key_path",
    "event_body",
    "format_time",
    "key_id_of",
    "public_key_from_hex",
    "seal",
    "utc_now",
    "verify_chain",
]

FORMAT_VERSION = "robustops-audit-1"
"""First line of every event body; a new body layout gets a new version."""

GENESIS = "0" * 64
"""``prev`` of event 1."""

KEY_ENV_VAR = "ROBUSTOPS_AUDIT_KEY"
"""Environment variable naming the private key file, overriding :func:`default_key_path`'s
default."""

MAX_KEY_FILE_BYTES = 64 * 1024
"""Largest key file read (bytes); an Ed25519 PKCS#8 PEM is 119."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


# -- event format ---------------------------------------------------------------------------------


def canonical_json(obj: Any) -> str:
    """``obj`` as canonical JSON text: sorted keys, no whitespace, non-ASCII kept as is, NaN and
    ±∞ refused (:class:`ValueError`). It never contains a raw newline."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def format_time(moment: datetime) -> str:
    """A timezone-aware ``moment`` as the ``at`` of an event: UTC, microseconds, ``Z``
    (``2026-12-07T01:02:03.123456Z``). A naive datetime raises :class:`AuditError`."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise AuditError(
            f"audit time {moment.isoformat()} has no time zone; pass an aware datetime"
        )
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def utc_now() -> str:
    """The current time as the ``at`` of an event (see :func:`format_time`)."""
    return format_time(datetime.now(UTC))


def event_body(
    seq: int,
    at: str,
    actor: str,
    action: str,
    subject: str,
    key_id: str,
    prev: str,
    payload: str,
) -> bytes:
    """The bytes an event's ``hash`` is the SHA-256 of: :data:`FORMAT_VERSION` and the fields in
    this order, joined by ``"\\n"``, UTF-8."""
    return f"{FORMAT_VERSION}\n{seq}\n{at}\n{actor}\n{action}\n{subject}\n{key_id}\n{prev}\n{payload}".encode()


def chain_link(hash_hex: str, signature_hex: str) -> str:
    """The ``prev`` of the event after one with this ``hash`` and ``signature`` (both hex):
    lowercase hex ``sha256(raw hash ‖ raw signature)``."""
    return hashlib.sha256(bytes.fromhex(hash_hex) + bytes.fromhex(signature_hex)).hexdigest()


class EventLike(Protocol):
    """Anything with the ten fields of an audit event as attributes: an :class:`AuditEvent`, an
    ORM row of ``audit_events``, a named tuple."""

    @property
    def seq(self) -> int: ...
    @property
    def at(self) -> str: ...
    @property
    def actor(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def payload(self) -> str: ...
    @property
    def key_id(self) -> str: ...
    @property
    def prev(self) -> str: ...
    @property
    def hash(self) -> str: ...
    @property
    def signature(self) -> str: ...


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One sealed event, the fields of an ``audit_events`` row (see the module docstring for
    their formats). Build one with :func:`seal`; check a chain of them with
    :func:`verify_chain`."""

    seq: int
    at: str
    actor: str
    action: str
    subject: str
    payload: str
    key_id: str
    prev: str
    hash: str
    signature: str

    @classmethod
    def from_row(cls, row: EventLike) -> AuditEvent:
        """A copy of any object with the event's attributes (e.g. an ORM row)."""
        return cls(
            seq=row.seq,
            at=row.at,
            actor=row.actor,
            action=row.action,
            subject=row.subject,
            payload=row.payload,
            key_id=row.key_id,
            prev=row.prev,
            hash=row.hash,
            signature=row.signature,
        )

    def body(self) -> bytes:
        """The bytes :attr:`hash` is the SHA-256 of (:func:`event_body`)."""
        return event_body(
            self.seq,
            self.at,
            self.actor,
            self.action,
            self.subject,
            self.key_id,
            self.prev,
            self.payload,
        )

    def link(self) -> str:
        """The ``prev`` of the next event (:func:`chain_link`)."""
        return chain_link(self.hash, self.signature)

    def payload_data(self) -> dict[str, Any]:
        """:attr:`payload` parsed back into a dict."""
        data: dict[str, Any] = json.loads(self.payload)
        return data

    def as_row(self) -> dict[str, Any]:
        """The fields as a dict, column name to value (for an INSERT)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _one_line(name: str, value: object, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise AuditError(f"audit event {name} must be a string, not {type(value).__name__}")
    if "\n" in value:
        raise AuditError(f"audit event {name} {short_repr(value)} contains a newline")
    if not value and not empty:
        raise AuditError(f"audit event {name} is empty")
    return value


def seal(
    previous: EventLike | None,
    at: datetime | str,
    actor: str,
    action: str,
    subject: str,
    payload: Mapping[str, Any],
    key: AuditKey,
) -> AuditEvent:
    """The event after ``previous`` (``None`` for the first one), hashed and signed with ``key``.

    ``at`` is an aware datetime or already a ``…T…​.ffffffZ`` string (:func:`format_time`);
    ``payload`` is a JSON-serialisable mapping, stored as :func:`canonical_json` text. Raises
    :class:`AuditError` when ``actor`` or ``action`` is empty, a one-line field contains a
    newline, ``at`` is malformed or the payload is not JSON (NaN, ±∞ and non-JSON types
    included). ``previous`` is trusted: verify the chain it ends, not this call."""
    if isinstance(at, datetime):
        at = format_time(at)
    if not isinstance(at, str) or not _TIME.fullmatch(at):
        raise AuditError(
            f"audit event time {short_repr(at)} is not YYYY-MM-DDTHH:MM:SS.ffffffZ (UTC)"
        )
    try:
        datetime.fromisoformat(at[:-1])
    except ValueError:
        raise AuditError(f"audit event time {at} is not a real date and time") from None
    _one_line("actor", actor)
    _one_line("action", action)
    _one_line("subject", subject, empty=True)
    if not isinstance(payload, Mapping):
        raise AuditError(f"audit event payload must be a mapping, not {type(payload).__name__}")
    try:
        text = canonical_json(dict(payload))
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit event payload is not JSON: {exc}") from None
    if previous is None:
        seq, prev = 1, GENESIS
    else:
        try:
            seq, prev = previous.seq + 1, chain_link(previous.hash, previous.signature)
        except (TypeError, ValueError) as exc:
            raise AuditError(f"the previous audit event is malformed: {exc}") from None
    digest = hashlib.sha256(
        event_body(seq, at, actor, action, subject, key.key_id, prev, text)
    ).hexdigest()
    return AuditEvent(
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        subject=subject,
        payload=text,
        key_id=key.key_id,
        prev=prev,
        hash=digest,
        signature=key.sign_hash(digest),
    )


# -- keys -----------------------------------------------------------------------------------------


def key_id_of(public_raw: bytes) -> str:
    """The key id of a raw 32-byte Ed25519 public key: its lowercase hex SHA-256."""
    return hashlib.sha256(public_raw).hexdigest()


def public_key_from_hex(text: str) -> bytes:
    """The raw 32 bytes of an Ed25519 public key written as 64 lowercase hex digits (as
    :attr:`AuditKey.public_hex` writes it); :class:`AuditError` when it is not one. Use it to
    build the ``public_keys`` of :func:`verify_chain`: ``{key_id_of(raw): raw}``."""
    if not isinstance(text, str) or not _HEX64.fullmatch(text):
        raise AuditError(f"public key {short_repr(text)} is not 64 lowercase hex digits")
    raw = bytes.fromhex(text)
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise AuditError(f"public key {text} is not an Ed25519 key: {exc}") from None
    return raw


def default_key_path(home: Path) -> Path:
    """Where the audit signing key lives: the file named by ``$ROBUSTOPS_AUDIT_KEY`` when set
    (``~`` expanded), else ``home/keys/audit-ed25519.pem``."""
    named = os.environ.get(KEY_ENV_VAR, "").strip()
    if named:
        return Path(named).expanduser()
    return Path(home) / "keys" / "audit-ed25519.pem"


def _read_key_file(path: Path) -> bytes | None:
    """The bytes of the key file, ``None`` when it does not exist; :class:`AuditError` when it is
    not a regular file, group/others have any access to it (POSIX), or it is too large. Mode
    and size are read from the opened file, not the path (no check-then-open race)."""
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)  # a FIFO
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditError(f"cannot read the audit key {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise AuditError(f"the audit key {path} is not a regular file")
        if os.name == "posix" and info.st_mode & 0o077:
            raise AuditError(
                f"the audit key {path} has mode {stat.S_IMODE(info.st_mode):04o}: group or others "
                f"can access it, so it is refused; if it was not exposed, run `chmod 600 {path}`, "
                "otherwise replace the key"
            )
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_KEY_FILE_BYTES + 1)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise AuditError(f"the audit key {path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    return data


class AuditKey:
    """An Ed25519 private key that signs audit events.

    ``key_id`` is the lowercase hex SHA-256 of ``public_raw``, the raw 32-byte public key;
    ``path`` the file it was loaded from or created in (``None`` for :meth:`generate`)."""

    __slots__ = ("_private", "key_id", "path", "public_raw")

    def __init__(self, private: Ed25519PrivateKey, path: Path | None = None) -> None:
        self._private = private
        self.public_raw: bytes = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id: str = key_id_of(self.public_raw)
        self.path = path

    def __repr__(self) -> str:
        return f"AuditKey(key_id={self.key_id[:16]}…, path={self.path})"

    @property
    def public_hex(self) -> str:
        """The raw public key as 64 lowercase hex digits (see :func:`public_key_from_hex`)."""
        return self.public_raw.hex()

    def public_keys(self) -> dict[str, bytes]:
        """``{key_id: public_raw}``, the ``public_keys`` of :func:`verify_chain` for this key."""
        return {self.key_id: self.public_raw}

    def sign_hash(self, hash_hex: str) -> str:
        """The hex Ed25519 signature (64 bytes) over the raw bytes of an event hash."""
        return self.sign(bytes.fromhex(hash_hex)).hex()

    def sign(self, message: bytes) -> bytes:
        """The raw Ed25519 signature (64 bytes) of ``message`` (e.g. a DSSE envelope's
        pre-authentication encoding)."""
        return self._private.sign(message)

    def private_pem(self) -> bytes:
        """The private key as an unencrypted PKCS#8 PEM (the key file's content)."""
        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def generate(cls) -> AuditKey:
        """A new random key, not saved anywhere."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def _parse(cls, data: bytes, path: Path) -> AuditKey:
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except TypeError:  # cryptography: "Password was not given but private key is encrypted"
            raise AuditError(
                f"the audit key {path} is encrypted; an unencrypted PKCS#8 PEM is needed"
            ) from None
        except ValueError as exc:
            raise AuditError(f"the audit key {path} is not a PEM private key: {exc}") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise AuditError(
                f"the audit key {path} is a {type(private).__name__}, not an Ed25519 key"
            )
        return cls(private, path)

    @classmethod
    def load(cls, path: str | Path) -> AuditKey:
        """The key in ``path`` (unencrypted PKCS#8 PEM). :class:`AuditError` when it is missing,
        malformed, encrypted, not Ed25519 or accessible to group/others."""
        p = Path(path)
        data = _read_key_file(p)
        if data is None:
            raise AuditError(f"the audit key {p} does not exist")
        return cls._parse(data, p)

    @classmethod
    def load_or_create(cls, path: str | Path) -> AuditKey:
        """The key in ``path``; when there is none, a new key saved there first, mode 0600 from
        the start (written to a temporary file and linked into place, so a reader never sees
        half a key; a missing folder is created with mode 0700). When several processes race,
        the first to finish creating wins and the others load its key."""
        p = Path(path)
        data = _read_key_file(p)
        if data is not None:
            return cls._parse(data, p)
        key = cls.generate()
        try:
            p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write_bytes(p, key.private_pem(), mkdir=False, mode=0o600, exclusive=True)
        except FileExistsError:
            return cls.load(p)
        except OSError as exc:
            raise AuditError(f"cannot create the audit key {p}: {exc.strerror or exc}") from None
        return cls(key._private, p)


# -- verification ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditVerdict:
    """What :func:`verify_chain` found.

    ``ok``: every check passed. ``events_checked``: events read that passed every check.
    ``first_bad_seq``: where the chain first fails (see :func:`verify_chain`), ``None`` when
    ``ok``. ``reason``: one sentence, what failed or what was verified. ``head_seq`` and
    ``head_hash``: the last event that passed (0 and ``None`` when none did); when ``ok``, the
    checkpoint to record and pass back as ``expect_head`` later. ``signatures_checked``: Ed25519
    verifications done."""

    ok: bool
    events_checked: int
    first_bad_seq: int | None
    reason: str
    head_seq: int
    head_hash: str | None
    signatures_checked: int


def _public_key(key_id: str, public_keys: Mapping[str, bytes]) -> Ed25519PublicKey | str:
    """The public key of ``key_id``, or the reason it cannot be used."""
    raw = public_keys.get(key_id)
    if raw is None:
        return f"is signed by key {short_repr(key_id, 24)}, which is not among the known keys"
    if isinstance(raw, (bytearray, memoryview)):
        raw = bytes(raw)
    if not isinstance(raw, bytes) or key_id_of(raw) != key_id:
        return f"is signed by key {key_id[:16]}…, but the public key supplied for it does not hash to that id"
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        return f"is signed by key {key_id[:16]}…, whose supplied public key is not an Ed25519 key"


def _seq_reason(seq: object, expected: int, rest: Iterator[EventLike]) -> str:
    """Why ``seq`` at position ``expected`` is wrong: reads the rest of the stream (only
    ``seq``) to tell a deletion from a reordering."""
    if not isinstance(seq, int) or isinstance(seq, bool):
        return f"seq {short_repr(seq)} where {expected} was expected: not a sequence number"
    if seq == expected - 1:
        return f"seq {seq} appears twice in a row: an event was inserted (duplicated)"
    if seq < expected:
        return f"seq {seq} comes after seq {expected - 1}: events were reordered"
    later_expected = later_again = False
    for ev in rest:
        later = getattr(ev, "seq", None)
        if later == expected:
            later_expected = True
            break
        if later == seq:
            later_again = True
    if later_expected:
        return f"seq {seq} where {expected} was expected, and seq {expected} comes later: events were reordered"
    if later_again:
        return f"seq {seq} where {expected} was expected, and seq {seq} again later: an event was inserted or a seq edited"
    missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
    return f"seq {seq} where {expected} was expected: {missing} missing, events were deleted"


def verify_chain(
    events: Iterable[EventLike],
    public_keys: Mapping[str, bytes],
    *,
    pinned: str | None = None,
    full: bool = False,
    expect_head: tuple[int, str] | None = None,
) -> AuditVerdict:
    """Verify a chain of events, read once in ``seq`` order without holding them in memory.

    ``public_keys`` maps key ids to raw 32-byte Ed25519 public keys (e.g.
    :meth:`AuditKey.public_keys`); ``pinned``, a key id every event must be signed with (a chain
    re-sealed with another key is refused only by this, or by leaving that key out of
    ``public_keys``). ``full`` verifies every signature; by default only the head's, which
    authenticates the whole chain through the links (see the module docstring); it is then as
    fast as hashing. ``expect_head``, the ``(head_seq, head_hash)`` of an earlier verdict:
    the chain must still hold that event, which detects deleting events from the end (nothing
    else can).

    Checks, per event in this order, stopping at the first failure: ``seq`` is the previous
    plus one, from 1 (a gap is reported as a deletion, a repeat as an insertion, a step back as
    a reordering); ``prev`` is the link of the previous event; ``hash`` is the SHA-256 of the
    body; ``key_id`` is in ``public_keys`` and its key hashes to it; ``key_id == pinned``;
    ``signature`` is 128 lowercase hex digits; with ``full``, the signature is valid; the
    checkpoint event's hash is ``expect_head``'s. Then, without ``full``, the head's signature;
    then the length against ``expect_head``.

    ``first_bad_seq`` is the position (from 1; the seq it should carry) of the first event that
    fails a check. So: an edit of a field of event *k* → *k*; of event *k*'s ``seq``, deleting
    event *k* or swapping it with a later one → *k*; an event inserted at position *k* → *k*
    (*k* + 1 when it is a copy of the event just before or after it). A well-formed edit of a
    signature is an exception: in fast mode event *k*'s signature is only checked through event
    *k* + 1's ``prev``, so it is reported at *k* + 1 (at *k* with ``full``, and for the head).
    When the head's signature fails in fast mode, the signatures are scanned from the start to
    name the first bad one (a forger who re-hashed the chain after event *k* is caught at *k*);
    that needs a second pass, so ``events`` must then be re-iterable (a list, or an object whose
    ``__iter__`` runs its query again); a one-shot iterator gets the head named instead. Events
    missing from the end (``expect_head``) → the first missing seq.

    Verification failures are returned as a verdict, never raised; malformed values (a
    non-hex hash, a missing attribute) fail the event they are in.
    """
    if expect_head is not None:
        cp_seq, cp_hash = expect_head
        if not isinstance(cp_seq, int) or cp_seq < 1 or not _HEX64.fullmatch(str(cp_hash)):
            raise AuditError(
                f"expect_head {short_repr(expect_head)} is not (seq ≥ 1, 64 lowercase hex digits)"
            )
    else:
        cp_seq, cp_hash = 0, ""
    sha256 = hashlib.sha256
    fromhex = bytes.fromhex
    keys: dict[str, Ed25519PublicKey] = {}
    sigs = 0
    expected = 1
    link = GENESIS
    head_hash: str | None = None
    before_head: str | None = None  # the hash of the event before the head
    head_sig = b""
    head_key: Ed25519PublicKey | None = None
    head_key_id = ""
    stream = iter(events)
    reiterable = stream is not events

    def bad(at: int, reason: str) -> AuditVerdict:
        return AuditVerdict(False, at - 1, at, reason, at - 1, head_hash, sigs)

    for ev in stream:
        try:
            seq = ev.seq
            if seq != expected:
                return bad(expected, _seq_reason(seq, expected, stream))
            prev = ev.prev
            if prev != link:
                return bad(
                    seq,
                    f"event {seq}'s prev does not link to event {seq - 1}'s hash and signature "
                    f"(its prev, or event {seq - 1}'s signature, was edited)"
                    if seq > 1
                    else f"event 1's prev is not {GENESIS[:8]}… (the chain does not start here)",
                )
            key_id = ev.key_id
            stored = ev.hash
            body = f"{FORMAT_VERSION}\n{seq}\n{ev.at}\n{ev.actor}\n{ev.action}\n{ev.subject}\n{key_id}\n{prev}\n{ev.payload}".encode()
            if sha256(body).hexdigest() != stored:
                return bad(
                    seq, f"event {seq}'s hash does not match its content (a field was edited)"
                )
            key = keys.get(key_id)
            if key is None:
                found = _public_key(key_id, public_keys)
                if isinstance(found, str):
                    return bad(seq, f"event {seq} {found}")
                key = keys[key_id] = found
            if pinned is not None and key_id != pinned:
                return bad(
                    seq,
                    f"event {seq} is signed by key {key_id[:16]}…, not the pinned key "
                    f"{pinned[:16]}… (the chain was re-sealed with another key)",
                )
            signature = ev.signature
            raw_sig = fromhex(signature)
            if len(raw_sig) != 64 or raw_sig.hex() != signature:
                return bad(seq, f"event {seq}'s signature is not 128 lowercase hex digits")
            if full:
                sigs += 1
                try:
                    key.verify(raw_sig, fromhex(stored))
                except InvalidSignature:
                    return bad(seq, f"event {seq}'s signature is not valid for its hash and key")
            if seq == cp_seq and stored != cp_hash:
                return bad(
                    seq,
                    f"event {seq}'s hash differs from the checkpoint's: the chain was rewritten "
                    "from there on",
                )
            link = sha256(fromhex(stored) + raw_sig).hexdigest()
        except (AttributeError, TypeError, ValueError, UnicodeError) as exc:
            return bad(expected, f"event at position {expected} is malformed: {short_repr(exc)}")
        before_head = head_hash
        head_hash, head_sig, head_key, head_key_id = stored, raw_sig, key, key_id
        expected += 1

    n = expected - 1
    if n == 0 or head_hash is None or head_key is None:
        if cp_seq:
            return bad(1, f"the chain is empty but the checkpoint expects seq {cp_seq}: truncated")
        return AuditVerdict(True, 0, None, "the chain is empty", 0, None, 0)
    if not full:
        sigs += 1
        try:
            head_key.verify(head_sig, fromhex(head_hash))
        except InvalidSignature:
            return _scan_signatures(events if reiterable else None, n, keys, sigs, before_head)
    if cp_seq > n:
        return AuditVerdict(
            False,
            n,
            n + 1,
            f"the chain ends at seq {n} but the checkpoint expects seq {cp_seq}: "
            f"seq {n + 1}..{cp_seq} were deleted from the end",
            n,
            head_hash,
            sigs,
        )
    how = (
        "every signature checked"
        if full
        else "the head's signature checked, the links bind the rest"
    )
    return AuditVerdict(
        True,
        n,
        None,
        f"seq 1..{n} intact, head {head_hash[:16]}… signed by key {head_key_id[:16]}… ({how})",
        n,
        head_hash,
        sigs,
    )


def _scan_signatures(
    events: Iterable[EventLike] | None,
    n: int,
    keys: Mapping[str, Ed25519PublicKey],
    sigs: int,
    before_head: str | None,
) -> AuditVerdict:
    """The verdict when the head's signature fails in fast mode: every link and hash held, so
    the first event whose signature fails is where a forger (without the key) started."""
    if events is None:
        return AuditVerdict(
            False,
            n - 1,
            n,
            f"event {n}'s (the head's) signature is not valid, so nothing in the chain is "
            "authenticated; the events could not be read again to name the first bad signature "
            "(pass a re-iterable, or verify with full=True)",
            n - 1,
            before_head,
            sigs,
        )
    fromhex = bytes.fromhex
    previous: str | None = None
    for ev in events:
        try:
            seq = ev.seq
            if seq >= n:
                break
            sigs += 1
            keys[ev.key_id].verify(fromhex(ev.signature), fromhex(ev.hash))
        except InvalidSignature:
            return AuditVerdict(
                False,
                seq - 1,
                seq,
                f"event {seq}'s signature is not valid for its hash and key, nor is the head's "
                f"(event {n}): the chain was re-hashed from event {seq} on without the key",
                seq - 1,
                previous,
                sigs,
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            break  # changed since the first pass; name the head
        previous = ev.hash
    return AuditVerdict(
        False,
        n - 1,
        n,
        f"event {n}'s (the head's) signature is not valid for its hash and key",
        n - 1,
        before_head,
        sigs,
    )
