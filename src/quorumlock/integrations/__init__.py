"""Integrations with job schedulers (optional dependencies: ``pip install
quorumlock[integrations]``).

* ``quorumlock.integrations.apscheduler``: APScheduler 3.x executors that run
  every job once per scheduled tick across all the scheduler processes that
  share the nodes.
* ``quorumlock.integrations.celery``: a Celery task base class that prevents
  concurrent duplicate runs of a task with the same arguments.

Each module imports its scheduler only when it is imported itself.
"""
