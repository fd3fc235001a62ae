"""A chaos client: one OS process (so that SIGSTOP pauses a real process, and
``faketime`` can slow one client's clock), run by the harness as

    python -m quorumlock.chaos.worker CONFIG.json

It contends for the lock keys and does a read-modify-write of a counter per
key in the storage node, recording every operation with host monotonic
timestamps (:func:`quorumlock.chaos.clock.host_monotonic_ns`, immune to
libfaketime) to its own JSONL file.  Two modes:

``auto``    loop until ``end_at``: pick a key, acquire, read, check the
            lease, write ``read + 1``, release.
``script``  obey one JSON command per line on stdin and answer one JSON line
            per command on stdout (the targeted schedules of
            :mod:`quorumlock.chaos.scenarios` drive clients this way).

Storage access per ``fencing``: ``off`` plain ``HGET``/``HSET``; ``on`` a
fenced read and a fenced compare-and-set (:class:`quorumlock.fencing.FencedStore`);
``write-only`` a plain read and a fenced write (the negative control:
docs/faults.md and docs/fencing-storage.md).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from typing import Any, Dict, Optional

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .clock import host_monotonic_ns as now
from .history import HistoryWriter

STORAGE_PREFIX = "ctr:"


def storage_key(key: str) -> str:
    return STORAGE_PREFIX + key


class Client:
    """The state of one chaos client process."""

    def __init__(self, cfg: Dict[str, Any]) -> None:
        self.cfg = cfg
        self.name = cfg["client"]
        self.fencing = cfg.get("fencing", "off")
        self.ttl = float(cfg.get("ttl", 1.0))
        self.hist = HistoryWriter(cfg["history"], flush_every=1 if cfg.get("mode") == "script" else 64)
        self.seq = 0
        self.rng = random.Random(cfg.get("seed"))
        self.held: Dict[str, Any] = {}  # key -> (lock, acquire op id)
        self.last_read: Dict[str, Any] = {}  # key -> (raw value, int value)
        self.out = sys.stdout
        st = cfg["storage"]
        self.redis = redis.Redis(host=st["host"], port=int(st["port"]), protocol=2,
                                 socket_timeout=float(cfg.get("storage_timeout", 5.0)),
                                 socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 0))
        self.store = None
        if self.fencing != "off":
            from ..fencing import FencedStore

            self.store = FencedStore(self.redis, raise_on_stale=False)
        self.mgr = self._make_manager()

    def _make_manager(self) -> Any:
        cfg = self.cfg
        kw = dict(ttl=self.ttl, drift_factor=float(cfg.get("drift_factor", 0.01)),
                  node_timeout=cfg.get("node_timeout"))
        if cfg.get("engine", "quorumlock") == "faulty":
            from .faulty import FaultyLockManager

            mgr = FaultyLockManager(cfg["urls"], bugs=cfg.get("bugs", ()),
                                    on_sent=self._on_sent if cfg.get("mode") == "script" else None, **kw)
            return mgr.connect()
        from ..blocking import LockManager

        mgr = LockManager(cfg["urls"], restart_guard=cfg.get("guard", True),
                          fencing=self.fencing != "off" or bool(cfg.get("lock_fences")),
                          retry_count=1, **kw)
        mgr.connect()
        if cfg.get("fence_commit") == "unchecked":
            # Negative control of row 30 (quorumlock.chaos.fence_offsets): the
            # first-round fence commit, without the clock check.
            from ..metrics import _engines

            for eng in _engines(mgr):
                eng.fence_clock_check = False
        return mgr

    # -- recording ---------------------------------------------------------

    def _op(self, op: str, key: str, **kw: Any) -> Dict[str, Any]:
        self.seq += 1
        rec = {"type": "op", "id": f"{self.name}:{self.seq}", "client": self.name, "op": op, "key": key}
        rec.update(kw)
        return rec

    def _emit(self, rec: Dict[str, Any]) -> None:
        self.hist.write(rec)

    def say(self, **kw: Any) -> None:
        """One line to the harness (script mode)."""
        self.out.write(json.dumps(kw) + "\n")
        self.out.flush()

    def _on_sent(self) -> None:
        self.say(event="sent", t=now())

    # -- operations --------------------------------------------------------

    def acquire(self, key: str) -> Optional[Any]:
        rec = self._op("acquire", key)
        rec["invoke"] = now()
        lock = None
        try:
            lock = self.mgr.try_acquire(key)
        except Exception as exc:  # a client must survive any node answer
            rec["error"] = repr(exc)[:300]
        t = now()
        rec["complete"] = t
        if lock is not None:
            validity = lock.validity
            rec.update(ok=True, token=lock.token.hex(), fence=lock.fence, validity=round(validity, 6),
                       valid_until=t + int(validity * 1e9), nodes=lock.nodes)
            self.held[key] = (lock, rec["id"])
        else:
            rec["ok"] = False
            token = getattr(self.mgr, "last_token", None)
            if token is not None:
                rec["token"] = token.hex()
        self._emit(rec)
        return rec

    def _lock(self, key: str) -> Any:
        held = self.held.get(key)
        if held is None:
            raise RuntimeError(f"{self.name} holds no lock on {key!r}")
        return held

    def check(self, key: str) -> bool:
        lock, lid = self._lock(key)
        rec = self._op("check", key, lock=lid)
        rec["invoke"] = now()
        ok = bool(lock.valid)
        rec.update(complete=now(), ok=ok, validity=round(lock.validity, 6))
        self._emit(rec)
        return ok

    def read(self, key: str) -> Dict[str, Any]:
        lock, lid = self._lock(key)
        skey = storage_key(key)
        fenced = self.fencing == "on"
        rec = self._op("read", key, lock=lid, skey=skey, fence=lock.fence, fenced=fenced)
        rec["invoke"] = now()
        raw = None
        try:
            if fenced:
                r = self.store.read(skey, lock.fence)
                rec["status"] = r.status
                raw = r.value
            else:
                raw = self.redis.hget(skey, "value")
                rec["status"] = "ok"
        except redis.RedisError as exc:
            rec["status"] = "error"
            rec["error"] = repr(exc)[:300]
        rec["complete"] = now()
        if rec["status"] == "ok":
            value = int(raw) if raw is not None else 0
            rec["value"] = value
            self.last_read[key] = (raw, value)
        else:
            self.last_read.pop(key, None)
        rec["ok"] = rec["status"] == "ok"
        self._emit(rec)
        return rec

    def write(self, key: str) -> Dict[str, Any]:
        lock, lid = self._lock(key)
        skey = storage_key(key)
        if key not in self.last_read:
            raise RuntimeError(f"{self.name}: write of {key!r} without a successful read")
        raw, value = self.last_read.pop(key)
        new = value + 1
        kind = {"on": "cas", "write-only": "write"}.get(self.fencing, "plain")
        rec = self._op("write", key, lock=lid, skey=skey, fence=lock.fence, kind=kind, value=new, expected=value)
        rec["invoke"] = now()
        try:
            if kind == "cas":
                r = self.store.compare_and_set(skey, raw, new, lock.fence)
                rec["status"] = r.status
            elif kind == "write":
                r = self.store.write(skey, new, lock.fence)
                rec["status"] = r.status
            else:
                self.redis.hset(skey, "value", new)
                rec["status"] = "ok"
        except (redis.TimeoutError, redis.ConnectionError) as exc:
            rec["status"] = "unknown"  # it may have been applied
            rec["error"] = repr(exc)[:300]
        except redis.RedisError as exc:
            rec["status"] = "error"
            rec["error"] = repr(exc)[:300]
        rec["complete"] = now()
        rec["ok"] = rec["status"] == "ok"
        self._emit(rec)
        return rec

    def release(self, key: str) -> Dict[str, Any]:
        lock, lid = self._lock(key)
        rec = self._op("release", key, lock=lid, token=lock.token.hex())
        rec["invoke"] = now()
        ok = False
        try:
            ok = bool(lock.release())
        except Exception as exc:
            rec["error"] = repr(exc)[:300]
        rec.update(complete=now(), ok=ok)
        self.held.pop(key, None)
        self._emit(rec)
        return rec

    def extend(self, key: str, ttl: Optional[float] = None) -> Dict[str, Any]:
        lock, lid = self._lock(key)
        rec = self._op("extend", key, lock=lid, token=lock.token.hex())
        rec["invoke"] = now()
        ok = False
        try:
            ok = bool(lock.extend(ttl))
        except Exception as exc:  # quorumlock raises LockNotOwned
            rec["error"] = repr(exc)[:300]
        t = now()
        rec.update(complete=t, ok=ok)
        if ok:
            v = lock.validity
            rec.update(validity=round(v, 6), valid_until=t + int(v * 1e9))
        self._emit(rec)
        return rec

    # -- auto mode ---------------------------------------------------------

    def run_auto(self) -> int:
        cfg = self.cfg
        end_at = int(cfg["end_at"])
        keys = list(cfg["keys"])
        lo, hi = cfg.get("think", (0.0, 0.002))
        gap_lo, gap_hi = cfg.get("retry_gap", (0.0005, 0.003))
        ops = 0
        while now() < end_at:
            key = self.rng.choice(keys)
            a = self.acquire(key)
            ops += 1
            if not a.get("ok"):
                time.sleep(self.rng.uniform(gap_lo, gap_hi))
                continue
            r = self.read(key)
            ops += 1
            if r["status"] == "ok":
                if hi > 0:
                    time.sleep(self.rng.uniform(lo, hi))
                if self.check(key):
                    self.write(key)
                    ops += 1
            self.release(key)
            ops += 1
        return ops

    # -- script mode -------------------------------------------------------

    def run_script(self) -> None:
        self.say(event="ready", pid=os.getpid(), t=now())
        for line in sys.stdin:
            line = line.strip()
            if not line:
                continue
            cmd = json.loads(line)
            try:
                reply = self.do(cmd)
            except Exception as exc:
                reply = {"event": "error", "error": repr(exc)[:500]}
            reply.setdefault("t", now())
            self.say(**reply)
            if cmd.get("cmd") == "quit":
                return

    def do(self, cmd: Dict[str, Any]) -> Dict[str, Any]:
        c = cmd["cmd"]
        key = cmd.get("key")
        if c == "acquire":
            # Try until acquired or until the host deadline; "once": one attempt.
            until = cmd.get("until")
            gap = float(cmd.get("gap", 0.001))
            if cmd.get("announce"):
                self.say(event="invoking", t=now())
            while True:
                a = self.acquire(key)
                if a.get("ok") or cmd.get("once") or until is None or now() >= until:
                    return {"event": "acquired" if a.get("ok") else "failed", "op": a}
                time.sleep(gap)
        if c == "read":
            return {"event": "read", "op": self.read(key)}
        if c == "check":
            return {"event": "checked", "valid": self.check(key)}
        if c == "write":
            if cmd.get("if_valid") and not self.check(key):
                return {"event": "skipped"}
            return {"event": "written", "op": self.write(key)}
        if c == "release":
            return {"event": "released", "op": self.release(key)}
        if c == "extend":
            return {"event": "extended", "op": self.extend(key, cmd.get("ttl"))}
        if c == "sleep":
            # The harness may SIGSTOP us while we sleep: a GC pause at a
            # chosen point (after the lease was checked, before the write).
            self.say(event="sleeping", t=now())
            time.sleep(float(cmd["seconds"]))
            return {"event": "slept"}
        if c == "sleep_until_left":
            # Sleep (by this client's own clock) until the lease has `left`
            # seconds of validity, as a client that uses its lease to the end.
            lock, _ = self._lock(key)
            time.sleep(max(0.0, lock.validity - float(cmd["left"])))
            return {"event": "slept", "validity": lock.validity}
        if c == "rmw":
            # acquire (until), read, check, [hold], write, release: the other client
            until = cmd.get("until")
            gap = float(cmd.get("gap", 0.001))
            while True:
                a = self.acquire(key)
                if a.get("ok"):
                    break
                if until is None or now() >= until:
                    return {"event": "failed", "op": a}
                time.sleep(gap)
            r = self.read(key)
            out = {"event": "done", "acquire": a, "read": r}
            if r["status"] == "ok" and self.check(key):
                if cmd.get("hold"):
                    time.sleep(float(cmd["hold"]))
                out["write"] = self.write(key)
            out["release"] = self.release(key) if cmd.get("release", True) else None
            return out
        if c == "quit":
            for k in list(self.held):
                self.release(k)
            return {"event": "bye"}
        raise ValueError(f"unknown command {c!r}")

    def close(self) -> None:
        try:
            self.mgr.close()
        except Exception:
            pass
        self.hist.close()


def main(argv: Optional[list] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        cfg = json.load(f)
    # SIGTERM from the harness: write what we have and go.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(3)))
    client = Client(cfg)
    try:
        if cfg.get("mode") == "script":
            client.run_script()
        else:
            n = client.run_auto()
            sys.stdout.write(json.dumps({"event": "finished", "ops": n}) + "\n")
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)
