"""Template driver: copy this package to start a new protocol.

It polls an imaginary device whose tags are a sine or a ramp of time, so it runs anywhere
and passes the conformance suite. To make your own driver:

1. copy ``protocols/_template/`` to your package and rename the classes;
2. describe the source and tag keys in the two config models (pydantic);
3. open the connection in ``connect``, release it in ``close``, and read one poll group
   in ``read``, returning one columnar Frame (device errors on part of a group become
   bad-quality samples; a lost connection is an exception);
4. register the class under ``[project.entry-points."edge_agent.protocols"]``;
5. run the conformance suite: ``pytest tests/protocols/test_conformance.py``.
"""

from protocols._template.driver import TemplateDriver

__all__ = ["TemplateDriver"]
