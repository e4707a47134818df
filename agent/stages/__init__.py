"""Pipeline stages, one module each; :mod:`agent.pipeline` puts them in their fixed order."""
