"""Fault injection and the safety checker (``quorumlock chaos``)."""
