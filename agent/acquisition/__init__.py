"""Acquisition.

From a driver's reply to processed frames (frames, quality codes, clocks, scheduling, source
supervision, the stage pipeline).
"""
