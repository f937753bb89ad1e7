"""Bundled models (installed as ``cellflow_rt.bundled``): ONNX networks with their JSON manifests."""
