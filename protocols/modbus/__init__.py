"""Modbus TCP source driver (pymodbus)."""

from protocols.modbus.driver import ModbusDriver

__all__ = ["ModbusDriver"]
