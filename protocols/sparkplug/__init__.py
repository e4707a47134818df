"""Sparkplug B source driver: a passive host application reading a plant's namespace."""

from protocols.sparkplug.driver import SparkplugDriver

__all__ = ["SparkplugDriver"]
