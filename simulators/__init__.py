"""Deterministic device simulators for tests, demos and integrators.

Signal truth is a pure function of (seed, time), so a test can compute exactly what a
device served at any instant and compare it with what reached the store.
"""
