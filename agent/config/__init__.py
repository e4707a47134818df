"""Configuration.

The TOML file's models, loading with key-path errors, durations and path checks.
"""
