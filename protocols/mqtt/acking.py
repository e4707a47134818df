"""A paho client whose manual acknowledgement also makes QoS 2 wait for the durable write.

paho (2.x) with ``manual_ack`` holds back a QoS 1 message's PUBACK until ``ack``, which is
what a gateway needs: the broker keeps the message until the frame holding it is in the
frame log. For QoS 2 it does not help: paho answers the PUBLISH with PUBREC at once and
calls ``on_message`` only at the broker's PUBREL, deferring just the final PUBCOMP. But
PUBREC is where the message changes hands (the broker keeps only its packet id after it,
never redelivers the payload), so a crash between PUBREC and the write would lose it.

:class:`DurableAckClient` therefore takes a QoS 2 PUBLISH through paho's QoS 1 path
(``on_message`` at once, no automatic answer; the callback still sees ``qos == 2``), sends
PUBREC from ``ack``, and answers every PUBREL with PUBCOMP at once, including one for a
packet id from before a reconnect, which paho with ``manual_ack`` would leave unanswered,
holding one of the broker's in-flight slots until the session expires. A redelivered
PUBLISH (a crash before PUBREC) reaches ``on_message`` again, with its DUP flag set, like a
QoS 1 redelivery. Only paho's packet handlers are overridden, never its wire format.
"""

from __future__ import annotations

import struct

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

_QOS_BITS = 0x06  # of a PUBLISH fixed header
_QOS1 = 0x02
_QOS2 = 0x04


class DurableAckClient(mqtt.Client):
    """``mqtt.Client`` (create it with ``manual_ack=True``) acknowledging QoS 1 *and* 2
    only in :meth:`ack`, which the owner calls once the message is stored."""

    _exactly_once = False  # True while paho's QoS 1 path handles a QoS 2 PUBLISH

    def _handle_publish(self) -> MQTTErrorCode:
        command = self._in_packet["command"]
        if not self._manual_ack or command & _QOS_BITS != _QOS2:
            return super()._handle_publish()
        self._in_packet["command"] = command & ~_QOS_BITS | _QOS1
        self._exactly_once = True
        try:
            return super()._handle_publish()
        finally:
            self._exactly_once = False

    def _handle_on_message(self, message: mqtt.MQTTMessage) -> None:
        if self._exactly_once:
            message.qos = 2
        super()._handle_on_message(message)

    def _handle_pubrel(self) -> MQTTErrorCode:
        if not self._manual_ack:
            return super()._handle_pubrel()
        packet = self._in_packet["packet"]
        if len(packet) < 2:
            return MQTTErrorCode.MQTT_ERR_PROTOCOL
        (mid,) = struct.unpack_from("!H", packet)
        return self._send_pubcomp(mid)

    def ack(self, mid: int, qos: int) -> MQTTErrorCode:
        """PUBACK (QoS 1) or PUBREC (QoS 2) for a message received with ``mid``."""
        if self._manual_ack and qos == 2:
            return self._send_pubrec(mid)
        return super().ack(mid, qos)
