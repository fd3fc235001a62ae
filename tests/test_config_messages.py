"""Messages from parsing the ``nodes`` argument: no password in any of them,
and a warning for a single redis-py client.

First-round code (the merged round-2 code before this change):
* passwords: 3 of the 26 bad URLs below leaked a password, or a piece of it,
  through both constructors (6 of 52 cases failed): ``redis://user:ab@s3cret@host:x/0``
  showed ``user:***@s3cret@host`` (the redaction stopped at the first "@"),
  and a password holding "/" (``redis://:s3cr/et@host:6379/0``,
  ``redis://user:s3cr/et@host``) was shown whole, while urlsplit's
  "Port could not be cast to integer value as 's3cr'" quoted its first half.
* ``LockManager(redis.Redis(...))`` made a 1-node manager with no warning
  (``len(recorded warnings) == 0``), while two nodes warned.
"""

from __future__ import annotations

import warnings
from typing import Any, List

import pytest
import redis

from quorumlock import LockManager
from quorumlock import aio
from quorumlock._config import parse_nodes, redact_url

SECRET = "s3cr"  # every password below contains it

BAD_URLS = [
    "redis://user:s3cret@host:notaport/0",
    "rediss://:s3cret@[::1",
    "redis://user:s3cret@[::1:6379/0",
    "redis://:s3cret@[::1]:99999/0",
    "redis://user:s3cret@host:0/0",
    "redis://user:s3cret@host:-1/0",
    "redis://user:s3cret@host:６３７９/0",
    "redis://user:s3cret@host:6379/abc",
    "redis://user:s3cret@host:6379/-1",
    "redis://user:s3cret@host:6379/99999999999",
    "redis://user:s3cret@host:6379/0/extra",
    "redis://host:6379?db=x&password=s3cret",
    "redis://host:6379/x?password=s3cret",
    "redis://host:6379/x?password=s3cr@et",
    "rediss://user:s3cret@host:6379/0?ssl_cert_reqs=bogus",
    "rediss://host:6379/0?ssl_cert_reqs=bogus&password=s3cret",
    "rediss://user:s3cret@host:6379/0?ssl_ca_certs=/nonexistent/ca.pem",
    "unix://:s3cret@/tmp/x.sock?db=x",
    "unix:///tmp/x.sock?db=x&password=s3cret",
    "unix://?password=s3cret",
    "http://user:s3cret@host/0",
    "redis://user:s3cret@/0",
    "redis://us%40er:s3cr%40et@host:x/0",
    "redis://user:ab@s3cret@host:x/0",
    "redis://:s3cr/et@host:6379/0",
    "redis://user:s3cr/et@host",
]


def _messages(exc: BaseException) -> List[str]:
    """str and repr of the exception and of everything chained to it."""
    out: List[str] = []
    seen = set()
    e: Any = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        out += [str(e), repr(e)]
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return out


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
@pytest.mark.parametrize("url", BAD_URLS)
def test_no_password_in_any_parse_error(url: str, api: str) -> None:
    make = LockManager if api == "blocking" else aio.LockManager
    nodes = [url, url.replace("host", "host2", 1), url.replace("host", "host3", 1)]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        with pytest.raises((ValueError, TypeError, OSError)) as info:
            make(nodes)
    texts = _messages(info.value) + [str(w.message) for w in rec]
    assert not [t for t in texts if SECRET in t], texts


@pytest.mark.parametrize("url", BAD_URLS)
def test_redact_url_hides_every_password(url: str) -> None:
    assert SECRET not in redact_url(url)


def test_redact_url_keeps_what_helps() -> None:
    assert redact_url("redis://user:pw@host:6380/2") == "redis://user:***@host:6380/2"
    assert redact_url("redis://host:6380/2?password=pw&db=1") == "redis://host:6380/2?password=***&db=1"
    assert redact_url("redis://host:6380/2") == "redis://host:6380/2"


def test_one_redis_py_client_warns_it_is_not_a_quorum() -> None:
    client = redis.Redis(host="127.0.0.1", port=6390)
    try:
        with pytest.warns(UserWarning, match=r"not a Redlock quorum.*3 or 5") as rec:
            specs = parse_nodes(client)
        assert len(specs) == 1 and specs[0].port == 6390
        assert len([w for w in rec if "quorum" in str(w.message)]) == 1
        # A list of three clients does not warn.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            parse_nodes([redis.Redis(port=6390 + i) for i in range(3)])
    finally:
        client.close()
