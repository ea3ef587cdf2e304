"""The monitor's state in one SQLite file (``monitor.state``).

Tables:

- ``offsets(file, offset)``: how far each request-log file has been processed (bytes);
- ``meta(name, value)``: JSON values such as the last model swap;
- ``calibration(rule, fingerprint, status, source, values_json, summary_json, fitted_at)``:
  each rule's calibration window (``collecting`` until full, then ``fitted``);
- ``streams(rule, key, state_json)``: each rule's detector state (``state_dict``) and its
  current window, per API key for per-key rules (``key`` is ``""`` otherwise);
- ``alerts(id, …, payload_json)``: the outbox. An alert is inserted in the same transaction
  that advances the offsets past the request that fired it, so a crash either loses both (the
  request is read and fires again) or keeps both;
- ``deliveries(alert_id, sink, …)``: per sink, attempts and the time of the 2xx (or append)
  that delivered it; an alert without one is retried.

WAL journal with ``synchronous=FULL``: a killed monitor loses no committed transaction, and
``robustops monitor status`` can read while the monitor writes.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from robustops.errors import SpecError, short_repr

__all__ = ["MonitorState"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS offsets (file TEXT PRIMARY KEY, offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS calibration (
    rule TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, status TEXT NOT NULL,
    source TEXT NOT NULL, values_json TEXT NOT NULL, summary_json TEXT,
    fitted_at REAL, error TEXT, template_json TEXT
);
CREATE TABLE IF NOT EXISTS streams (
    rule TEXT NOT NULL, key TEXT NOT NULL, state_json TEXT NOT NULL,
    PRIMARY KEY (rule, key)
);
CREATE TABLE IF NOT EXISTS alerts (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, rule TEXT NOT NULL, key TEXT,
    severity TEXT NOT NULL, fired_ts REAL NOT NULL, created_at REAL NOT NULL,
    payload_json TEXT NOT NULL,
    rollback_due INTEGER NOT NULL DEFAULT 0, rollback_json TEXT,
    acked_by TEXT, acked_at REAL, ack_note TEXT
);
CREATE INDEX IF NOT EXISTS alerts_seq ON alerts (seq);
CREATE TABLE IF NOT EXISTS deliveries (
    alert_id TEXT NOT NULL, sink TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    delivered_at REAL, next_try REAL NOT NULL DEFAULT 0, last_error TEXT,
    PRIMARY KEY (alert_id, sink)
);
"""


class MonitorState:
    """The state file at ``path`` (created with its folder when missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on an exception)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # offsets and meta
    def offsets(self) -> dict[str, int]:
        """Byte offset per request-log file name."""
        return {f: int(o) for f, o in self.db.execute("SELECT file, offset FROM offsets")}

    def set_offsets(self, db: sqlite3.Connection, offsets: dict[str, int]) -> None:
        """Store ``offsets`` (inside a transaction)."""
        db.executemany(
            "INSERT INTO offsets (file, offset) VALUES (?, ?) "
            "ON CONFLICT(file) DO UPDATE SET offset = excluded.offset",
            sorted(offsets.items()),
        )

    def get_meta(self, name: str) -> Any:
        """A JSON value stored under ``name`` (None when unset)."""
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, db: sqlite3.Connection, name: str, value: Any) -> None:
        """Store a JSON value under ``name``."""
        db.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, json.dumps(value)),
        )

    # calibration and streams
    def calibrations(self) -> dict[str, dict[str, Any]]:
        """Every rule's calibration row as a dict (``values`` and ``summary`` decoded)."""
        out = {}
        for rule, fp, status, source, values, summary, fitted_at, error, tmpl in self.db.execute(
            "SELECT rule, fingerprint, status, source, values_json, summary_json, fitted_at, "
            "error, template_json FROM calibration"
        ):
            out[rule] = {
                "fingerprint": fp,
                "status": status,
                "source": source,
                "values": json.loads(values),
                "summary": json.loads(summary) if summary else None,
                "fitted_at": fitted_at,
                "error": error,
                "template": json.loads(tmpl) if tmpl else None,
            }
        return out

    def put_calibration(self, db: sqlite3.Connection, rule: str, row: dict[str, Any]) -> None:
        """Store a rule's calibration (the shape :meth:`calibrations` returns)."""
        db.execute(
            "INSERT OR REPLACE INTO calibration VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rule,
                row["fingerprint"],
                row["status"],
                row["source"],
                json.dumps(row["values"]),
                json.dumps(row["summary"]) if row.get("summary") is not None else None,
                row.get("fitted_at"),
                row.get("error"),
                json.dumps(row["template"]) if row.get("template") is not None else None,
            ),
        )

    def streams(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every stream's stored state by ``(rule, key)``."""
        return {
            (r, k): json.loads(s)
            for r, k, s in self.db.execute("SELECT rule, key, state_json FROM streams")
        }

    def put_stream(
        self, db: sqlite3.Connection, rule: str, key: str, state: dict[str, Any]
    ) -> None:
        """Store one stream's state."""
        db.execute(
            "INSERT OR REPLACE INTO streams VALUES (?, ?, ?)", (rule, key, json.dumps(state))
        )

    def drop_rule(self, db: sqlite3.Connection, rule: str) -> None:
        """Forget a rule's calibration and streams (its definition changed)."""
        db.execute("DELETE FROM calibration WHERE rule = ?", (rule,))
        db.execute("DELETE FROM streams WHERE rule = ?", (rule,))

    # alerts (the outbox)
    def add_alert(
        self, db: sqlite3.Connection, alert: dict[str, Any], sinks: list[str], rollback_due: bool
    ) -> bool:
        """Insert ``alert`` and one pending delivery per sink; False when its id is known."""
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM alerts").fetchone()[0]
        cur = db.execute(
            "INSERT OR IGNORE INTO alerts (id, seq, rule, key, severity, fired_ts, created_at, "
            "payload_json, rollback_due) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                alert["id"],
                seq,
                alert["rule"],
                alert.get("key"),
                alert["severity"],
                alert["fired_ts"],
                time.time(),
                json.dumps(alert),
                int(rollback_due),
            ),
        )
        if cur.rowcount == 0:
            return False
        db.executemany(
            "INSERT OR IGNORE INTO deliveries (alert_id, sink) VALUES (?, ?)",
            [(alert["id"], s) for s in sinks],
        )
        return True

    def alert(self, alert_id: str) -> dict[str, Any] | None:
        """The stored alert (with its rollback result and acknowledgement), or None."""
        rows = self.alerts(where="id = ?", params=(alert_id,))
        return rows[0] if rows else None

    def alerts(
        self, *, where: str = "1", params: tuple[Any, ...] = (), limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Stored alerts, newest first, each its payload plus ``rollback``, ``acked_by``,
        ``acked_at``, ``ack_note`` and ``deliveries`` (sink → delivered_at or None)."""
        sql = (
            "SELECT id, payload_json, rollback_due, rollback_json, acked_by, acked_at, ack_note "
            f"FROM alerts WHERE {where} ORDER BY seq DESC"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        out = []
        for aid, payload, due, rb, by, at, note in self.db.execute(sql, params).fetchall():
            a = json.loads(payload)
            a["rollback"] = {**a.get("rollback", {}), "pending": bool(due)}
            if rb is not None:
                a["rollback"]["result"] = json.loads(rb)
            a["acked_by"], a["acked_at"], a["ack_note"] = by, at, note
            a["deliveries"] = {
                s: d
                for s, d in self.db.execute(
                    "SELECT sink, delivered_at FROM deliveries WHERE alert_id = ?", (aid,)
                )
            }
            out.append(a)
        return out

    def pending_rollbacks(self) -> list[dict[str, Any]]:
        """Alerts whose rollback has not run yet, oldest first."""
        return [
            json.loads(p)
            for (p,) in self.db.execute(
                "SELECT payload_json FROM alerts WHERE rollback_due = 1 ORDER BY seq"
            )
        ]

    def set_rollback_result(self, alert_id: str, result: Any) -> None:
        """Record what the rollback did (its result, or an error) and clear it as due."""
        with self.transaction() as db:
            db.execute(
                "UPDATE alerts SET rollback_due = 0, rollback_json = ? WHERE id = ?",
                (json.dumps(result), alert_id),
            )

    def pending_deliveries(self, now: float) -> list[tuple[str, str, int, dict[str, Any]]]:
        """``(alert_id, sink, attempts, alert)`` not delivered yet and due at ``now``, oldest
        alert first; ``alert`` includes its rollback result."""
        rows = self.db.execute(
            "SELECT d.alert_id, d.sink, d.attempts FROM deliveries d JOIN alerts a "
            "ON a.id = d.alert_id WHERE d.delivered_at IS NULL AND d.next_try <= ? "
            "ORDER BY a.seq, d.sink",
            (now,),
        ).fetchall()
        out = []
        for aid, sink, attempts in rows:
            a = self.alert(aid)
            if a is not None:
                a.pop("deliveries", None)
                out.append((aid, sink, int(attempts), a))
        return out

    def mark_delivered(self, alert_id: str, sink: str) -> None:
        """The sink accepted the alert."""
        with self.transaction() as db:
            db.execute(
                "UPDATE deliveries SET delivered_at = ?, attempts = attempts + 1, "
                "last_error = NULL WHERE alert_id = ? AND sink = ?",
                (time.time(), alert_id, sink),
            )

    def mark_failed(self, alert_id: str, sink: str, error: str, next_try: float) -> None:
        """A delivery attempt failed; try again at ``next_try`` (Unix seconds)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, last_error = ?, next_try = ? "
                "WHERE alert_id = ? AND sink = ?",
                (error[:500], next_try, alert_id, sink),
            )

    def undelivered(self) -> int:
        """Deliveries still owed (any sink)."""
        return int(
            self.db.execute(
                "SELECT COUNT(*) FROM deliveries WHERE delivered_at IS NULL"
            ).fetchone()[0]
        )

    def delivery_errors(self) -> list[tuple[str, str, int, str | None]]:
        """``(alert_id, sink, attempts, last_error)`` of every undelivered delivery."""
        return [
            (a, s, int(n), e)
            for a, s, n, e in self.db.execute(
                "SELECT alert_id, sink, attempts, last_error FROM deliveries "
                "WHERE delivered_at IS NULL ORDER BY alert_id"
            )
        ]

    def resolve(self, prefix: str) -> str:
        """The full id of the one alert whose id starts with ``prefix`` (at least 4 hex
        characters); :class:`SpecError` when none or several match."""
        if not re.fullmatch(r"[0-9a-f]{4,32}", prefix):
            raise SpecError.single("alert id", f"{short_repr(prefix)} is not 4-32 hex characters")
        rows = self.db.execute(
            "SELECT id FROM alerts WHERE substr(id, 1, ?) = ?", (len(prefix), prefix)
        ).fetchall()
        if len(rows) != 1:
            what = "no alert" if not rows else f"{len(rows)} alerts"
            raise SpecError.single("alert id", f"{what} with id {prefix}…")
        return str(rows[0][0])

    def ack(self, alert_id: str, by: str, note: str | None) -> None:
        """Acknowledge the alert ``alert_id`` (a full id) by ``by`` with ``note``."""
        with self.transaction() as db:
            db.execute(
                "UPDATE alerts SET acked_by = ?, acked_at = ?, ack_note = ? WHERE id = ?",
                (by, time.time(), note, alert_id),
            )
