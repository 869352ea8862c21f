"""Thin Hydra entry points, one per DVC stage: read config, call library functions, write outputs."""
