"""Seeing and handing over a stored dataset: ``edge-agent report`` and ``edge-agent export``.

``dataset`` reads the files (footer and samples in one open, in window order) and ``chunk``
gathers their samples into numpy columns; ``series`` numbers every gateway/source/tag and
keeps what the lineage says of it; ``timegrid`` holds figures over time in buckets that
widen with the range; ``footers`` adds up the batches' quality figures, ``samples`` and
``gaps`` what only the samples show; ``figures`` puts them together per tag and source,
``document`` as JSON; ``text`` renders the table and CSV, ``html`` the page (with ``plots``,
``trends`` and ``markup``); ``export``, ``tablefile`` and ``datacard`` write the wide table
and its description.
"""
