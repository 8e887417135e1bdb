"""Proxy: writer and reader endpoints with health checks and failover (a later issue)."""
