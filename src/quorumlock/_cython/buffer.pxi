# A growable C byte buffer and the RESP encoders built on it.
#
# Every command is encoded once into the engine's scratch buffer and then
# memcpy'd into each node's output buffer; the output buffers are written with
# one transport.write per node per loop iteration (auto-pipelining).


cdef class WriteBuffer:
    cdef:
        char *buf
        Py_ssize_t len
        Py_ssize_t cap

    def __cinit__(self, Py_ssize_t cap=4096):
        self.buf = <char *>PyMem_Malloc(cap)
        if self.buf is NULL:
            raise MemoryError()
        self.len = 0
        self.cap = cap

    def __dealloc__(self):
        PyMem_Free(self.buf)
        self.buf = NULL

    cdef int _grow(self, Py_ssize_t need) except -1:
        cdef Py_ssize_t cap = self.cap * 2
        while cap < self.len + need:
            cap *= 2
        cdef char *nb = <char *>PyMem_Realloc(self.buf, cap)
        if nb is NULL:
            raise MemoryError()
        self.buf = nb
        self.cap = cap
        return 0

    cdef inline int write(self, const char *data, Py_ssize_t n) except -1:
        if self.len + n > self.cap:
            self._grow(n)
        memcpy(self.buf + self.len, data, n)
        self.len += n
        return 0

    cdef inline int write_bytes(self, bytes b) except -1:
        return self.write(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))

    cdef inline int write_buffer(self, WriteBuffer other) except -1:
        return self.write(other.buf, other.len)

    cdef int write_prefixed_int(self, char prefix, long long v) except -1:
        # "<prefix><decimal>\r\n"
        cdef char tmp[24]
        cdef int i = 23
        cdef bint neg = v < 0
        cdef unsigned long long u = <unsigned long long>(-v if neg else v)
        tmp[i] = c'\n'
        i -= 1
        tmp[i] = c'\r'
        i -= 1
        if u == 0:
            tmp[i] = c'0'
            i -= 1
        while u:
            tmp[i] = <char>(48 + u % 10)
            u //= 10
            i -= 1
        if neg:
            tmp[i] = c'-'
            i -= 1
        tmp[i] = prefix
        return self.write(tmp + i, 24 - i)

    cdef inline int write_bulk(self, const char *data, Py_ssize_t n) except -1:
        self.write_prefixed_int(c'$', n)
        self.write(data, n)
        return self.write(b"\r\n", 2)

    cdef inline int write_bulk_bytes(self, bytes b) except -1:
        return self.write_bulk(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))

    cdef int write_bulk_int(self, long long v) except -1:
        cdef char tmp[24]
        cdef int i = 24
        cdef bint neg = v < 0
        cdef unsigned long long u = <unsigned long long>(-v if neg else v)
        if u == 0:
            i -= 1
            tmp[i] = c'0'
        while u:
            i -= 1
            tmp[i] = <char>(48 + u % 10)
            u //= 10
        if neg:
            i -= 1
            tmp[i] = c'-'
        return self.write_bulk(tmp + i, 24 - i)

    cdef int write_arg(self, object arg) except -1:
        if type(arg) is bytes:
            return self.write_bulk_bytes(<bytes>arg)
        if type(arg) is int:
            return self.write_bulk_int(<long long>arg)
        if isinstance(arg, str):
            return self.write_bulk_bytes((<str>arg).encode("utf-8"))
        if isinstance(arg, (bytes, bytearray, memoryview)):
            return self.write_bulk_bytes(bytes(arg))
        if isinstance(arg, (int, float)) and not isinstance(arg, bool):
            return self.write_bulk_bytes((str(int(arg)) if isinstance(arg, int) else repr(float(arg))).encode())
        raise TypeError(f"cannot encode command argument of type {type(arg).__name__}")

    cdef int write_command(self, tuple args) except -1:
        self.write_prefixed_int(c'*', len(args))
        for a in args:
            self.write_arg(a)
        return 0

    cdef inline void clear(self) noexcept:
        self.len = 0

    cdef bytes take(self):
        cdef bytes out = PyBytes_FromStringAndSize(self.buf, self.len)
        self.len = 0
        return out


def encode_command(*args):
    """RESP-encode one command (bytes, str, int or float arguments)."""
    cdef WriteBuffer b = WriteBuffer(256)
    b.write_command(args)
    return b.take()
