"""MQTT source driver (paho-mqtt on asyncio): topic subscriptions mapped to tags."""

from protocols.mqtt.driver import MqttDriver

__all__ = ["MqttDriver"]
