"""Reply parsing with ``hiredis.Reader``.  One iteration = ``feed`` of one
node's replies to one operation and ``gets`` until nothing is complete.

The replies a node sends back in a cycle (``+OK`` to the SET, ``:1`` to the
release script), the ``$-1`` of a SET NX that lost, and the array a batch
script returns for a chunk of 500 keys."""

from __future__ import annotations

import hiredis
import pytest

REPLIES = {
    "+OK (acquired)": (b"+OK\r\n", 1),
    "$-1 (held)": (b"$-1\r\n", 1),
    ":1 (released)": (b":1\r\n", 1),
    "cycle x64 pipelined": ((b"+OK\r\n" + b":1\r\n") * 64, 128),
    "batch chunk of 500": (b"*500\r\n" + b":1\r\n" * 500, 1),
}


@pytest.mark.benchmark(group="parse")
@pytest.mark.parametrize("reply", list(REPLIES))
def test_parse(benchmark, reply):
    data, count = REPLIES[reply]
    reader = hiredis.Reader()
    feed, gets = reader.feed, reader.gets

    def parse():
        feed(data)
        n = 0
        while gets() is not False:
            n += 1
        return n

    assert benchmark(parse) == count
