"""Test tooling: the OTP release fixture builder and process helpers."""
