"""Windows.

Processed frames cut into time-aligned batches, with their data-quality figures and the wide
resampled form.
"""
