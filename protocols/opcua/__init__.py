"""OPC UA source driver (asyncua): subscriptions or polled reads over secure sessions."""

from protocols.opcua.driver import OpcUaDriver

__all__ = ["OpcUaDriver"]
