"""Pipeline stages, one module each.

:mod:`agent.acquisition.pipeline` puts them in their fixed order.
"""
