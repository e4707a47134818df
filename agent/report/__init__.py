"""Seeing and handing over a stored dataset: ``edge-agent report`` and ``edge-agent export``.

``dataset`` reads the files (footer and samples in one open, in window order); ``series``
numbers every gateway/source/tag and keeps what the lineage says of it; ``footers`` adds
up the batches' quality figures, ``samples`` and ``gaps`` what only the samples show;
``figures`` puts them together as the report; ``text``, ``html`` render it; ``export`` and
``datacard`` write the wide table and its description.
"""
