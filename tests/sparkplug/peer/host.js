// A Sparkplug host application made with Eclipse Tahu's sparkplug-payload and MQTT.js:
// subscribes to spBv1.0/<group>/#, decodes every message and prints it as a JSON line
// {"topic", "payload"} (64-bit numbers as numbers). As primary host <hostId> it publishes
// its STATE (Sparkplug 3.0: spBv1.0/STATE/<hostId>, retained, QoS 1, {"online", "timestamp"})
// online at connect, with an offline will. Commands on stdin (JSON lines):
//   {"cmd": "offline"}  STATE offline, then disconnect (a host outage)
//   {"cmd": "online"}   connect again: STATE online
//   {"cmd": "rebirth", "node": "..."}  NCMD Node Control/Rebirth = true to that node
// argv: serverUrl groupId hostId
"use strict";
const readline = require("readline");
const mqtt = require("mqtt");
const sparkplug = require("sparkplug-payload").get("spBv1.0");

const [serverUrl, groupId, hostId] = process.argv.slice(2);
const stateTopic = `spBv1.0/STATE/${hostId}`;
const say = (object) => process.stdout.write(JSON.stringify(object, (key, value) =>
  value && typeof value === "object" && value.low !== undefined && value.high !== undefined
    ? Number(BigInt.asUintN(64, (BigInt(value.high >>> 0) << 32n) | BigInt(value.low >>> 0)))
    : value) + "\n");
const state = (online) => JSON.stringify({ online, timestamp: Date.now() });
let client = null;

function connect() {
  client = mqtt.connect(serverUrl, {
    clientId: `host-${hostId}`, clean: true, reconnectPeriod: 0,
    will: { topic: stateTopic, payload: state(false), qos: 1, retain: true },
  });
  client.on("connect", () => {
    client.subscribe(`spBv1.0/${groupId}/#`, { qos: 1 }, () => {
      client.publish(stateTopic, state(true), { qos: 1, retain: true }, () =>
        say({ event: "online" }));
    });
  });
  client.on("message", (topic, message) => {
    try {
      say({ topic, payload: sparkplug.decodePayload(message) });
    } catch (error) {
      say({ topic, error: String(error) });
    }
  });
}

connect();
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  if (command.cmd === "offline") {
    // the edge node hears of it before the host leaves (it may publish until then)
    client.publish(stateTopic, state(false), { qos: 1, retain: true }, () =>
      setTimeout(() => client.end(false, {}, () => say({ event: "offline" })), 300));
  } else if (command.cmd === "online") {
    connect();
  } else if (command.cmd === "rebirth") {
    const payload = sparkplug.encodePayload({ timestamp: Date.now(), metrics: [
      { name: "Node Control/Rebirth", type: "Boolean", value: true }] });
    client.publish(`spBv1.0/${groupId}/NCMD/${command.node}`, Buffer.from(payload), { qos: 0 },
      () => say({ event: "rebirth sent" }));
  }
});
