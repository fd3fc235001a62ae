"""No password or lock token in any exception message, repr or log line.

Every test greps each message for the secret.  The docstrings record what the
first-round code showed."""

from __future__ import annotations

import logging

import pytest

from quorumlock import LockManager as SyncLockManager
from quorumlock import LockNotOwned, LockTimeout
from quorumlock._config import NodeSpec, parse_node, redact_url
from quorumlock.aio import LockManager
from quorumlock.errors import scrub_text
from quorumlock.nodes import LocalCluster, NodeStartError

from _engine_fixtures import core, run, sync_core  # noqa: F401

SECRET = "s3cr3t-pw"

BAD_URLS = [
    f"redis://user:{SECRET}@host:notaport",
    f"redis://:{SECRET}@host:99999",
    f"redis://:{SECRET}@host/notadb",
    f"redis://:{SECRET}@host/-1",
    f"redis://user:{SECRET}@/",
    f"ftp://user:{SECRET}@host",
    f"redis://user:{SECRET}@host:0",
    f"unix://user:{SECRET}@",
    f"unix:///tmp/x.sock?password={SECRET}&db=nope",
    f"redis://host/nope?password={SECRET}",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_url_messages_hide_the_password(url):
    """First-round code: all 10 failed: 9 messages printed the password (the
    whole URL went into the message) and port 0 was accepted (as 6379)."""
    for mgr in (LockManager, SyncLockManager):
        with pytest.raises(ValueError) as info:
            mgr([url])
        assert SECRET not in str(info.value), str(info.value)
        assert SECRET not in repr(info.value)


def test_single_url_string_message_hides_the_password():
    """``LockManager("redis://:pw@h")`` (a string, not a list) is refused
    naming the string.  First-round code: the message showed the password."""
    for mgr in (LockManager, SyncLockManager):
        with pytest.raises(TypeError) as info:
            mgr(f"redis://:{SECRET}@127.0.0.1:7001")
        assert SECRET not in str(info.value)


def test_redact_url():
    assert redact_url(f"redis://u:{SECRET}@h:1/2") == "redis://u:***@h:1/2"
    assert redact_url(f"redis://:{SECRET}@h") == "redis://:***@h"
    assert redact_url(f"unix:///s?db=1&password={SECRET}") == "unix:///s?db=1&password=***"
    assert redact_url("redis://h:1") == "redis://h:1"


def test_nodespec_and_manager_reprs_hide_the_password():
    """First-round code: ``repr(NodeSpec)`` (a dataclass repr) showed
    ``password='s3cr3t-pw'``."""
    spec = parse_node(f"redis://alice:{SECRET}@127.0.0.1:7001/2")
    assert spec.password == SECRET
    for text in (repr(spec), str(spec), spec.name, repr([spec])):
        assert SECRET not in text, text
    assert "***" in repr(spec) and "alice" in repr(spec)
    assert SECRET not in repr(NodeSpec(host="h", password=SECRET))
    for mgr in (LockManager, SyncLockManager):
        m = mgr([f"redis://:{SECRET}@127.0.0.1:7001"])
        assert SECRET not in repr(m) and SECRET not in str(m.nodes)


def test_local_cluster_reprs_hide_the_password(redis_server):
    """First-round code: ``repr(LocalCluster)`` and ``repr(node)`` showed
    ``redis://:s3cr3t-pw@127.0.0.1:...``; the URLs themselves (meant to be
    handed to a client) still carry it."""
    with LocalCluster(n=1, password=SECRET, server=redis_server) as c:
        assert SECRET in c.urls[0]          # the URL a client needs
        for text in (repr(c), str(c), repr(c.nodes[0]), c.nodes[0].address, repr(c._core.endpoint)):
            assert SECRET not in text, text


def test_node_start_error_hides_the_password(redis_server):
    """A server that refuses its command line echoes the offending config
    line, here the ``requirepass`` one (an extra argument appended to it).

    First-round code: the ``NodeStartError`` message (and ``node.error``, which
    ``quorumlock nodes up`` prints) contained the password."""
    with pytest.raises(NodeStartError) as info:
        LocalCluster(n=1, password=SECRET, server=redis_server, extra_args=["stray"])
    assert "requirepass" in str(info.value)
    assert SECRET not in str(info.value)


def _token_forms(token):
    text = token.decode("utf-8", "replace")
    return {token.hex(), text, text.replace("\r", " ").replace("\n", " "), repr(token)[2:-1]}


def _assert_clean(text, token):
    assert "\ufffd" not in text, text
    for form in _token_forms(token):
        assert form not in text, text


def test_scrub_text():
    tok = bytes(range(200, 220))
    raw = "ERR unknown command 'EVALSHA', with args beginning with: 'abc' '1' 'k' '" + tok.decode("utf-8", "replace") + "'"
    out = scrub_text(raw, [tok])
    _assert_clean(out, tok)
    assert out.startswith("ERR unknown command 'EVALSHA'")
    assert scrub_text("x" * 1000).endswith("...")


def test_error_reply_echoing_the_token_aio(run, core, make_cluster, caplog):
    """A node on which EVALSHA is disabled answers every extend/release with
    "ERR unknown command 'EVALSHA', with args beginning with: ... '<token>'".

    First-round code (both builds): the live token (decoded with replacement
    characters) was in the per-node outcome and in the ``LockTimeout``
    message of the failed acquire (SET disabled, second cluster).
    ``native_commands=False``: the extend must run the script even on a
    server with ``SET ... IFEQ`` (Valkey 9), which would not need EVALSHA."""
    c = make_cluster(n=1, mode="volatile", max_ttl=5.0, extra_args=["--rename-command", "EVALSHA", '""'])
    d = make_cluster(n=1, mode="volatile", max_ttl=5.0, extra_args=["--rename-command", "SET", '""'])

    async def body():
        async with LockManager(c.urls, ttl=5.0, native_commands=False, _core=core) as locks:
            lock = await locks.try_acquire("sec:a")
            assert lock is not None
            op = locks.engine.extend_op(lock, 5000)
            assert await op.waiter is False
            texts = [o.detail or "" for o in op.outcomes()]
            assert any("EVALSHA" in t for t in texts), texts
            for t in texts:
                _assert_clean(t, lock.token)
            with pytest.raises(LockNotOwned) as info:
                await lock.extend()
            _assert_clean(str(info.value), lock.token)
        async with LockManager(d.urls, ttl=5.0, _core=core) as locks:
            with pytest.raises(LockTimeout) as info:
                await locks.acquire("sec:b", retry_count=1)
            msg = str(info.value)
            assert "SET" in msg and "\ufffd" not in msg, msg

    with caplog.at_level(logging.DEBUG, logger="quorumlock"):
        run(body())
    for rec in caplog.records:
        assert "\ufffd" not in rec.getMessage()


def test_error_reply_echoing_the_token_blocking(sync_core, make_cluster):
    """The blocking API, same node.  First-round code: the token was in the
    per-node outcome of the failed extend."""
    c = make_cluster(n=1, mode="volatile", max_ttl=5.0, extra_args=["--rename-command", "EVALSHA", '""'])
    with SyncLockManager(c.urls, ttl=5.0, native_commands=False, _core=sync_core) as locks:
        lock = locks.try_acquire("sec:c")
        eng = locks.checkout()
        op = eng.extend_op(lock, 5000)
        eng.wait(op)
        texts = [o.detail or "" for o in op.outcomes()]
        assert any("EVALSHA" in t for t in texts), texts
        for t in texts:
            _assert_clean(t, lock.token)


def test_nodes_up_crash_line_hides_the_password(redis_server):
    """``quorumlock nodes up --password``: the URL lines carry the password
    (that is what they are for), the crash line must not.

    First-round code: ``# node 0 (redis://:s3cr3t-pw@127.0.0.1:...) crashed``."""
    import signal

    import psutil

    from test_cli_nodes import NodesUp

    cli = NodesUp("-n", "1", "--mode", "unsafe", "--max-ttl", "1", "--password", SECRET,
                  "--server", redis_server)
    try:
        cli.expect(r"^QUORUMLOCK_NODES=")
        cli.expect(r"Ctrl-C stops them")
        (server,) = [p for p in psutil.Process(cli.proc.pid).children() if "server" in p.name()]
        server.kill()
        line = cli.expect(r"^# node 0 .*crashed")
        assert SECRET not in line, line
        assert "***" in line
        cli.expect(r"^# node 0 up again")
        cli.proc.send_signal(signal.SIGINT)
        assert cli.proc.wait(timeout=15) == 0
        err = cli.proc.stderr.read() if cli.proc.stderr else ""
        assert SECRET not in err
    finally:
        cli.close()
