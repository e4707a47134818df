"""The store.

What makes acquisition durable (frame log, spool, encoding, quarantine, salvage) and forwards
batches to the uplinks.
"""
