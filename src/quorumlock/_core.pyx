# cython: language_level=3
"""The compiled engine of quorumlock.

One extension module made of the ``_cython/*.pxi`` files it includes (the uvloop
layout).  ``quorumlock._pycore`` is its pure-Python twin with the same names;
``quorumlock._backend`` picks one of the two."""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_SetFromErrno
from libc.stdint cimport uint64_t, int64_t

from quorumlock._cython.includes cimport ql_monotonic_ns, ql_random_take

IMPLEMENTATION = "cython"

include "_cython/clock.pxi"
