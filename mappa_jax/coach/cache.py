"""Content-addressed SQLite cache of coach verdicts (WAL mode), and replay.

Key = sha256 of (model, template hash, rendered prompt, decoding parameters, sample index), so
any change to what the coach would be asked gives a new key. What identifies a coach is the
model name and how it is asked (rubric template, decoding, sample index), not where it is
served: `base_url` (and the display name built from it) is deliberately NOT in the key, so a
run replayed with `coach.kind=replay`, or resumed against the same model behind another URL
(a local server moved to another port, a proxy), answers from the same rows; a different
model served under the same name would share them too, so give it its own `coach.model`.
Only replies of the model are stored (a score, or a reply that stayed unparseable after the
re-ask): transport errors, timeouts and open circuit breakers are never cached. The API key is
never part of a key or a row. Safe for concurrent use from threads and from asyncio tasks:
each thread has its own connection, writes are single statements, and the first writer of a
key wins (so replies at temperature > 0 stay reproducible).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import threading
import time

from mappa_jax.coach.types import CoachFatalError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
  key TEXT PRIMARY KEY,
  model TEXT NOT NULL,
  template_hash TEXT NOT NULL,
  status TEXT NOT NULL,
  score REAL,
  answer_correct INTEGER,
  reason TEXT NOT NULL,
  response TEXT NOT NULL,
  reasked INTEGER NOT NULL,
  tokens_in INTEGER NOT NULL,
  tokens_out INTEGER NOT NULL,
  created REAL NOT NULL
)"""


class CoachCacheMissError(CoachFatalError, KeyError):
  """Replay mode found no cached verdict for a request (fatal: a replay must not invent or
  mask verdicts the original run had)."""


def cache_key(model: str, template_hash: str, prompt: str, decoding: dict,
              sample_index: int = 0) -> str:
  """Hex sha256 over a canonical JSON of everything that determines the coach's reply."""
  payload = json.dumps({"model": model, "template_hash": template_hash, "prompt": prompt,
                        "decoding": decoding, "sample_index": int(sample_index)},
                       sort_keys=True, ensure_ascii=False, separators=(",", ":"))
  return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class CachedVerdict:
  status: str
  score: float | None
  answer_correct: bool | None
  reason: str
  response: str
  reasked: bool
  tokens_in: int
  tokens_out: int


class CoachCache:
  """SQLite verdict store at `path` (directories are created)."""

  def __init__(self, path: str):
    self.path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(self.path))
    os.makedirs(parent, exist_ok=True)
    self._local = threading.local()
    self._lock = threading.Lock()
    self._connections: list[sqlite3.Connection] = []
    conn = self._conn()
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode.lower() != "wal":
      raise RuntimeError(f"coach cache {self.path}: SQLite refused WAL mode (got {mode!r}); "
                         "put the cache on a local filesystem")
    conn.execute(_SCHEMA)
    conn.commit()

  def _conn(self) -> sqlite3.Connection:
    conn = getattr(self._local, "conn", None)
    if conn is None:
      conn = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False)
      conn.execute("PRAGMA busy_timeout=60000")
      conn.execute("PRAGMA synchronous=NORMAL")
      self._local.conn = conn
      with self._lock:
        self._connections.append(conn)
    return conn

  def get(self, key: str) -> CachedVerdict | None:
    row = self._conn().execute(
        "SELECT status, score, answer_correct, reason, response, reasked, tokens_in, "
        "tokens_out FROM verdicts WHERE key = ?", (key,)).fetchone()
    if row is None:
      return None
    status, score, answer, reason, response, reasked, t_in, t_out = row
    return CachedVerdict(status=status, score=score,
                         answer_correct=None if answer is None else bool(answer),
                         reason=reason, response=response, reasked=bool(reasked),
                         tokens_in=t_in, tokens_out=t_out)

  def put(self, key: str, model: str, template_hash: str, verdict: CachedVerdict) -> None:
    if verdict.status not in ("scored", "invalid"):
      raise ValueError(f"only model verdicts are cached, got status {verdict.status!r}")
    conn = self._conn()
    with conn:
      conn.execute(
          "INSERT OR IGNORE INTO verdicts VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
          (key, model, template_hash, verdict.status, verdict.score,
           None if verdict.answer_correct is None else int(verdict.answer_correct),
           verdict.reason, verdict.response, int(verdict.reasked), verdict.tokens_in,
           verdict.tokens_out, time.time()))

  def export_jsonl(self, path: str) -> int:
    """Writes every row (key, model, template hash, verdict, reply, tokens) as JSON lines,
    oldest first: an audit trail to read or diff. Returns the number of rows."""
    cols = ("key", "model", "template_hash", "status", "score", "answer_correct", "reason",
            "response", "reasked", "tokens_in", "tokens_out", "created")
    n = 0
    with open(path, "w", encoding="utf-8") as f:
      for row in self._conn().execute(
          f"SELECT {', '.join(cols)} FROM verdicts ORDER BY created, key"):
        f.write(json.dumps(dict(zip(cols, row)), ensure_ascii=False) + "\n")
        n += 1
    return n

  def __len__(self) -> int:
    return self._conn().execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]

  def close(self) -> None:
    with self._lock:
      for conn in self._connections:
        conn.close()
      self._connections.clear()
    self._local = threading.local()
