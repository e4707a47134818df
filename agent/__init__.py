"""edge-agent: an asyncio daemon that acquires, cleans, time-aligns and forwards plant data."""

__version__ = "0.1.0"
