"""The proxy: a writer endpoint and a reader endpoint in front of the compute nodes, with health
checks and failover (routing.py decides, server.py carries it out)."""
