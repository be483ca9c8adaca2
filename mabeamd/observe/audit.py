"""The audit log: one hash-chained JSON line per control change, refused write, session
outcome, CURVE authentication failure and agent-id takeover, in STATE_DIR/audit/.

Who writes: the arbiter alone. Sessions end in workers, but their final records already come
to the arbiter (the session service relays them), and so do the workers' refusals (a link
message); one writer keeps the chain linear without any lock between processes.

Why a writer thread with a bounded queue: the arbiter's event loop must never wait on a disk
(an fsync on a busy disk takes tens of milliseconds; a hung NFS mount, forever). `submit`
only puts the record on a queue; the thread assigns each record its sequence number and the
previous record's hash (so the chain follows the queue's order, which is the loop's), writes
a batch, fsyncs it once and resolves the waiters' futures on the loop. A full queue (a disk
slower than the records come) refuses the record rather than growing without bound: that
is an audit failure like a write error, counted, logged and, with on_failure = "refuse",
a reason to refuse changes.

The file is opened per batch, not kept open: an administrator who moves the directory away
or replaces it (or a disk that goes read-only) is noticed at the next record instead of
writing into an unlinked file, and rotation is a rename between two batches.

Line format (docs/operations.md "Audit"): a JSON object with `seq` (1, 2, ... across files),
`time` (UTC, ISO 8601), `kind` and the kind's fields, `prev` (the previous record's hash;
64 zeros for the first) and `hash`: sha256 over the canonical JSON (sorted keys, no spaces,
UTF-8) of the record without `hash`. Editing, inserting, removing or reordering lines
breaks the chain at that line; `verify_chain` says where.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("mabeamd.audit")

FILE = "audit.jsonl"
GENESIS = "0" * 64
QUEUE_MAX = 10000  # records waiting for the thread; past this they are refused (failures)
BATCH_MAX = 512  # records per write + fsync
LOG_EVERY = 30.0  # seconds between two "cannot write the audit log" errors
TAIL_READ = 1 << 20  # bytes read back from the end to find the last record at start


class AuditUnavailable(Exception):
    """The record could not be written; str() says why."""


def plain(value: Any) -> Any:
    """The value as JSON can hold it: msgpack bytes become {"$bytes": base64} and bytes
    map keys text, tuples lists. Records are built from wire data, which may carry both."""
    if isinstance(value, dict):
        return {(k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)): plain(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    return value


def _flat(queued: dict[str, Any]) -> dict[str, Any]:
    """A queued record (time, kind, the submitter's fields) as the line's fields."""
    return {"time": queued["time"], "kind": queued["kind"], **plain(queued["fields"])}


def canonical(record: dict[str, Any]) -> str:
    """The one text a record hashes as: sorted keys, no whitespace, non-ASCII as is.
    Python's float repr round-trips, so parse + dump of a line gives the same text back."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body).encode()).hexdigest()


def now_iso(t: float | None = None) -> str:
    dt = datetime.datetime.fromtimestamp(time.time() if t is None else t,
                                         datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> float:
    """A record's `time` (or --since): ISO 8601, `Z` or an offset; no zone means UTC."""
    dt = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return dt.timestamp()


def files(directory: Path) -> list[Path]:
    """The audit files, oldest first: audit.jsonl.N ... audit.jsonl.1, audit.jsonl."""
    rotated = []
    for p in directory.glob(FILE + ".*"):
        suffix = p.name[len(FILE) + 1:]
        if suffix.isdigit():
            rotated.append((int(suffix), p))
    out = [p for _, p in sorted(rotated, reverse=True)]
    current = directory / FILE
    if current.exists():
        out.append(current)
    return out


@dataclass
class Line:
    path: Path
    number: int  # 1-based, within its file
    text: str
    record: dict[str, Any] | None  # None: not a JSON object


def lines(directory: Path) -> Iterator[Line]:
    for path in files(directory):
        with path.open("rb") as f:
            for i, raw in enumerate(f, 1):
                text = raw.decode("utf-8", "replace").rstrip("\n")
                try:
                    rec = json.loads(text)
                except ValueError:
                    rec = None
                yield Line(path, i, text, rec if isinstance(rec, dict) else None)


def verify_chain(directory: Path) -> tuple[int, list[str]]:
    """(records read, problems): each problem names the file, line and what is wrong. The
    first record's `prev` is taken as the anchor (older files may have been rotated away)."""
    problems: list[str] = []
    prev: str | None = None
    seq: int | None = None
    n = 0
    for ln in lines(directory):
        n += 1
        where = f"{ln.path.name}:{ln.number}"
        rec = ln.record
        if rec is None:
            problems.append(f"{where}: not a JSON object (a torn or edited line)")
            prev, seq = hashlib.sha256(ln.text.encode()).hexdigest(), None
            continue
        if rec.get("hash") != record_hash(rec):
            problems.append(f"{where}: seq {rec.get('seq')}: its hash does not match its "
                            "content (the line was edited)")
        if prev is not None and rec.get("prev") != prev:
            problems.append(f"{where}: seq {rec.get('seq')}: prev does not link to the line "
                            "before (a line was removed, inserted or moved here)")
        if seq is not None and rec.get("seq") != seq + 1:
            problems.append(f"{where}: seq {rec.get('seq')} follows seq {seq}")
        prev = str(rec.get("hash"))
        seq = rec.get("seq") if isinstance(rec.get("seq"), int) else None
    return n, problems


def _last_record(directory: Path) -> tuple[int, str]:
    """(seq, hash) of the last record, for the next one to link to; (0, GENESIS) for none.
    A torn last line (power loss mid-write; never acknowledged) is cut off, as the WAL does."""
    for path in reversed(files(directory)):
        with path.open("rb+") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - TAIL_READ)
            f.seek(start)
            data = f.read()
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                log.warning("audit: %s ends in a torn line of %d bytes; cut off", path,
                            len(data) - cut)
                f.truncate(start + cut)
                data = data[:cut]
            for raw in reversed(data.splitlines()):
                try:
                    rec = json.loads(raw)
                except ValueError:
                    log.error("audit: the last line of %s is not a record; the chain goes "
                              "on from it (verify reports it)", path)
                    return 0, hashlib.sha256(raw).hexdigest()
                if isinstance(rec, dict):
                    seq = rec.get("seq")
                    return (seq if isinstance(seq, int) else 0), str(rec.get("hash"))
    return 0, GENESIS


class _Pending:
    __slots__ = ("future", "loop", "record")

    def __init__(self, record: dict[str, Any] | None,
                 future: asyncio.Future[None] | None,
                 loop: asyncio.AbstractEventLoop | None) -> None:
        self.record = record  # None: a probe (can the file be opened for appending?)
        self.future = future
        self.loop = loop


class AuditLog:
    """The arbiter's audit writer. `submit` from the event loop; the thread does the rest."""

    def __init__(self, directory: Path, *, max_bytes: int, keep: int, on_failure: str,
                 journal: Any = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self.directory = directory
        self.max_bytes = max_bytes
        self.keep = keep
        self.on_failure = on_failure
        self.journal = journal  # a logging.Handler to journald, or None
        self.stats = {"records": 0, "failures": 0}
        self.failing: str | None = None  # why the last write failed; None once one works
        self._queue: queue.Queue[_Pending | None] = queue.Queue(QUEUE_MAX)
        self._thread: threading.Thread | None = None
        self._seq, self._prev = 0, GENESIS
        self._reload_tail = True
        self._logged_at = -LOG_EVERY
        self._unlogged = 0

    # --- the event loop's side -------------------------------------------------------------

    def start(self) -> None:
        if not self.enabled:
            return
        self._thread = threading.Thread(target=self._run, name="mabeamd-audit", daemon=True)
        self._thread.start()
        self._put(_Pending(None, None, None))  # find out now whether the directory works

    def state(self) -> dict[str, Any]:
        """For `mabeamctl status` and the metrics."""
        return {"enabled": self.enabled, "dir": str(self.directory),
                "on_failure": self.on_failure, "failing": self.failing, **self.stats}

    @property
    def refusing(self) -> bool:
        return self.on_failure == "refuse" and self.failing is not None

    def submit(self, kind: str, fields: dict[str, Any], *, wait: bool = False,
               ) -> asyncio.Future[None] | None:
        """Queue a record; with `wait`, a future done once it is on disk (or failed with
        AuditUnavailable). Never blocks. `fields` must not change after this: the thread
        turns them into JSON (a session's record may be thousands of answers: converting
        it here would hold up the loop)."""
        if not self.enabled:
            return None
        record = {"time": now_iso(), "kind": kind, "fields": fields}
        return self._put(_Pending(record, *self._future(wait)))

    def probe(self) -> asyncio.Future[None]:
        """A future done once the directory takes an append (AuditUnavailable if not)."""
        fut = self._put(_Pending(None, *self._future(True)))
        assert fut is not None
        return fut

    async def ensure(self) -> None:
        """Raise AuditUnavailable when on_failure is "refuse" and the directory does not
        take an append now (a probe through the thread: a control change is rare enough to
        afford one, and the state seen at the last record may be stale)."""
        if self.enabled and self.on_failure == "refuse":
            await self.probe()

    def _future(self, wait: bool) -> tuple[asyncio.Future[None] | None,
                                           asyncio.AbstractEventLoop | None]:
        if not wait:
            return None, None
        loop = asyncio.get_running_loop()
        return loop.create_future(), loop

    def _put(self, item: _Pending) -> asyncio.Future[None] | None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._failed(f"{QUEUE_MAX} records are waiting for the disk", [item])
        return item.future

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the thread."""
        if self._thread is None:
            return
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
        self._thread = None
        if self.journal is not None:
            self.journal.close()

    # --- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch: list[_Pending] = []
            stop = item is None
            if item is not None:
                batch.append(item)
            while not stop and len(batch) < BATCH_MAX:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                else:
                    batch.append(more)
            if batch:
                self._write(batch)
            if stop:
                return

    def _write(self, batch: list[_Pending]) -> None:
        lines_out: list[str] = []
        try:
            try:
                self.directory.mkdir()
            except FileExistsError:
                pass
            else:
                # Not mkdir(mode=): the umask is the process's, and the arbiter's main thread
                # narrows it for a moment to bind its sockets (zmqutil.bind_private), which
                # once made this directory 0600 (unusable) when the two coincided.
                os.chmod(self.directory, 0o700)
            if self._reload_tail:  # at start, and after a failure left the file unknown
                self._seq, self._prev = _last_record(self.directory)
                self._reload_tail = False
            seq, prev = self._seq, self._prev
            path = self.directory / FILE
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                size = os.fstat(fd).st_size
                for item in batch:
                    if item.record is None:
                        continue
                    seq += 1
                    rec = {"seq": seq, **_flat(item.record), "prev": prev}
                    # One canonical dump: the hash is over it, and the line is it with the
                    # hash added last (verify parses, drops "hash" and dumps again).
                    body = canonical(rec)
                    prev = hashlib.sha256(body.encode()).hexdigest()
                    line = body[:-1] + f',"hash":"{prev}"}}\n'
                    data = line.encode()
                    if size and size + len(data) > self.max_bytes:
                        os.fsync(fd)
                        os.close(fd)
                        fd = -1
                        self._rotate()
                        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                                     0o600)
                        size = 0
                    os.write(fd, data)
                    size += len(data)
                    lines_out.append(line)
                os.fsync(fd)
            finally:
                if fd >= 0:
                    os.close(fd)
        except OSError as exc:
            self._reload_tail = True  # some lines may be in the file: read it back next time
            self._failed(f"{self.directory / FILE}: {exc.strerror or exc}", batch)
            self._journal([json.dumps({**_flat(i.record), "unwritten": True})
                           for i in batch if i.record is not None])
            return
        self._seq, self._prev = seq, prev
        self.stats["records"] += len(lines_out)
        if self.failing is not None:
            log.warning("audit: the log is written again (%s)", self.directory / FILE)
            self.failing = None
        self._journal(lines_out)
        for item in batch:
            self._resolve(item, None)

    def _rotate(self) -> None:
        """audit.jsonl -> .1 -> .2 ...; the oldest past `keep` is deleted. The chain goes on:
        the next record's prev is the last hash of the file just renamed."""
        d = self.directory
        with contextlib.suppress(FileNotFoundError):
            (d / f"{FILE}.{self.keep}").unlink()
        for i in range(self.keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.rename(d / f"{FILE}.{i}", d / f"{FILE}.{i + 1}")
        os.rename(d / FILE, d / f"{FILE}.1")
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _failed(self, reason: str, batch: list[_Pending]) -> None:
        """Loud, but not once per record: a metric always, a log line every LOG_EVERY s."""
        lost = sum(1 for i in batch if i.record is not None)
        self.stats["failures"] += lost or 1
        self.failing = reason
        self._unlogged += lost
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY:
            self._logged_at = now
            log.error("audit: cannot write the audit log: %s (%d record(s) not written; "
                      "on_failure = %s)", reason, self._unlogged, self.on_failure)
            self._unlogged = 0
        for item in batch:
            self._resolve(item, AuditUnavailable(reason))

    @staticmethod
    def _resolve(item: _Pending, exc: Exception | None) -> None:
        fut, loop = item.future, item.loop
        if fut is None or loop is None:
            return

        def done() -> None:
            if not fut.done():
                if exc is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(exc)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(done)

    def _journal(self, texts: list[str]) -> None:
        if self.journal is None:
            return
        for text in texts:
            rec = logging.LogRecord("mabeamd.audit", logging.INFO, __file__, 0,
                                    text.rstrip("\n"), None, None)
            self.journal.handle(rec)


def journal_handler() -> Any:
    """A journald handler with SYSLOG_IDENTIFIER=mabeamd-audit when systemd connected our
    stderr to the journal (the same test and fallback as logsetup), else None."""
    from mabeamd.logsetup import _journal_handler, stderr_is_journal

    if not stderr_is_journal():
        return None
    handler = _journal_handler("mabeamd-audit")
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def from_config(cfg: Any, state_dir: Path) -> AuditLog:
    """The arbiter's writer for its [audit] section (config.AuditSection)."""
    return AuditLog(state_dir / "audit", max_bytes=cfg.max_bytes, keep=cfg.keep,
                    on_failure=cfg.on_failure, enabled=cfg.enabled,
                    journal=journal_handler() if cfg.enabled else None)
