"""Routing decisions: which route, which destination, which share of traffic.

Pure functions over the config snapshot; the transports and the proxy drive them.
"""

from meshsdk.routing.split import weight_shares

__all__ = ["weight_shares"]
