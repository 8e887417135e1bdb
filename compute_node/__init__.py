"""Compute node: PostgreSQL protocol, SQL, pages in a bounded buffer cache, redo shipped to a 4-of-6 quorum."""
