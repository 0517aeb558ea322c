"""relctl's gRPC contract, generated from proto/relctl/*/*.proto (see proto/generate.py)."""
