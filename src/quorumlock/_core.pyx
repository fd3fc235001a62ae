# cython: language_level=3
"""The compiled engine of quorumlock.

One extension module made of the ``_cython/*.pxi`` files it includes (the uvloop
layout).  ``quorumlock._pycore`` is its pure-Python twin with the same names;
``quorumlock._backend`` picks one of the two."""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_SetFromErrno
from libc.stdint cimport uint64_t, int64_t

from quorumlock._cython.includes cimport ql_monotonic_ns, ql_random_take

IMPLEMENTATION = "cython"

include "_cython/clock.pxi"

import asyncio
import logging
import os
import ssl
from collections import deque

from hiredis import Reader, ReplyError

from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from libc.string cimport memcpy, memset
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t

from quorumlock.errors import NodeOutcome, scrub_text
from quorumlock._scripts import (
    RELEASE as RELEASE_SCRIPT, RELEASE_SHA, EXTEND as EXTEND_SCRIPT, EXTEND_SHA,
    ACQUIRE_MANY as ACQUIRE_MANY_SCRIPT, ACQUIRE_MANY_SHA,
    RELEASE_MANY as RELEASE_MANY_SCRIPT, RELEASE_MANY_SHA, ALL as SCRIPTS,
    ACQUIRE_EX as ACQUIRE_EX_SCRIPT, ACQUIRE_EX_SHA, FENCE_COMMIT as FENCE_COMMIT_SCRIPT, FENCE_COMMIT_SHA,
    RELEASE_EX as RELEASE_EX_SCRIPT, RELEASE_EX_SHA, EXTEND_EX as EXTEND_EX_SCRIPT, EXTEND_EX_SHA,
    FENCE_PREFIX, DELAY_PREFIX, RESERVED_PREFIX, S_RELEASE as _S_RELEASE, S_RELEASE_EX as _S_RELEASE_EX,
)

# numkeys of the release scripts as C globals: every release carries its EVAL
# fallback (for NOSCRIPT), so no attribute lookup on that path.
cdef bytes RELEASE_NUMKEYS = _S_RELEASE.numkeys
cdef bytes RELEASE_EX_NUMKEYS = _S_RELEASE_EX.numkeys

include "_cython/consts.pxi"
include "_cython/buffer.pxi"

cdef class Engine
cdef class Op
cdef class Lock

include "_cython/node.pxi"
include "_cython/ops.pxi"
include "_cython/lock.pxi"
include "_cython/engine.pxi"
include "_cython/sync.pxi"
