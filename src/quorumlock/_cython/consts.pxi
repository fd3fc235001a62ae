# Constants of the engine (cdef enums: compile-time, no Python lookups).

cdef enum:
    MAX_NODES = 32          # also quorumlock._config.MAX_NODES
    INBUF_SIZE = 65536      # read buffer handed to the transport (BufferedProtocol)
    RING_INITIAL = 256      # pending-reply slots per connection, grows by doubling
    HELD_BACK_MAX = 4096    # clean-up releases kept per down node for its reconnect
    BATCH_NS_PER_KEY = 20000  # reply deadline allowance per key and node of a batch (ns)

# What one node answered for one key of one operation.  The same numbers are
# used by the pure-Python twin (quorumlock._pycore).
cdef enum NodeStatus:
    ST_PENDING = 0
    ST_OK = 1
    ST_HELD = 2             # SET NX found the key held / compare-and-* found another token
    ST_ERROR = 3            # an error reply (OOM, READONLY, WRONGTYPE, BUSY, LOADING, ...)
    ST_TIMEOUT = 4          # no reply before the per-node deadline
    ST_DOWN = 5             # not connected when the operation was sent, or the connection died
    ST_EXCLUDED = 6         # left out by the restart guard (or, fenced, a clock ahead of a majority's)
    ST_REFUSED = 7          # fence commit refused: the fence is further ahead of this node's clock than D

STATUS_NAMES = ("pending", "ok", "held", "error", "timeout", "down", "excluded", "refused")
