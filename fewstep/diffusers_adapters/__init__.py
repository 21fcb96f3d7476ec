"""Adapters that wrap diffusers models as fewstep denoisers (see docs/adapters.md)."""
