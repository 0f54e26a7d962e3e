"""What every boxwatch process shares; exporters/, detector/ and stack/ import it, never each other.

``log`` (structured logs, ``--log.*`` flags), ``web`` (the HTTP server, listen addresses), ``times``
(durations, RFC 3339), ``backoff``, ``loop`` (background threads), ``files`` (atomic writes),
``exposition`` (label escaping), ``jobs`` (Prometheus job names), ``xid`` (NVIDIA Xid catalog).
"""

__version__ = "0.1.0"
