"""The config service (control plane): stores that watch Istio YAML and push validated versions."""
