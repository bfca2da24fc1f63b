"""Workload security: mTLS policy, JWT request authentication and TLS decisions."""
