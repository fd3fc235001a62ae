"""Integrations with job schedulers (optional dependencies: ``pip install
quorumlock[integrations]``, or one extra each: ``rq``, ``dramatiq``,
``redbeat``, ``arq``).

* ``quorumlock.integrations.apscheduler``: APScheduler 3.x executors that run
  every job once per scheduled tick across all the scheduler processes that
  share the nodes.
* ``quorumlock.integrations.celery``: a Celery task base class that prevents
  concurrent duplicate runs of a task with the same arguments.
* ``quorumlock.integrations.rq``: exclusive RQ job functions, and a
  leader-locked rq-scheduler ``Scheduler``.
* ``quorumlock.integrations.dramatiq``: a ``QuorumLock`` middleware for
  exclusive actors (``exclusive=True`` / ``exclusive_key=...``).
* ``quorumlock.integrations.redbeat``: a celery-redbeat beat scheduler with a
  quorum leader lease and a claim per tick.
* ``quorumlock.integrations.arq``: exclusive arq job coroutines and cron jobs
  whose ticks run on one worker.

docs/schedulers.md describes them all.

Each module imports its scheduler only when it is imported itself.
"""
