"""The outbound data path: per-destination state and the call flow the drivers run."""
