"""Telemetry: Istio-standard metrics, W3C/B3 tracing and Envoy-format access logs."""
