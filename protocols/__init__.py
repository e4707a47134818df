"""Protocol drivers. The plug-in API lives in :mod:`protocols.sdk`."""
