"""aurora-db: an Aurora-style relational database whose storage is a replicated redo log.

Shared pieces live here: limits and quorum constants, the frame codec, redo records, the page
format with its single redo-apply function, the PostgreSQL wire codec, typed errors, and the CLI.
"""

__version__ = "0.1.0"
