// An edge node made with Eclipse Tahu's sparkplug-client, driven by JSON lines on stdin:
//   {"cmd": "nbirth" | "ndata", "metrics": [...]}
//   {"cmd": "dbirth" | "ddata", "device": "...", "metrics": [...]}
//   {"cmd": "ddeath", "device": "..."}
//   {"cmd": "skip_seq"}          the next message's seq jumps by one (a lost message)
//   {"cmd": "stop"}              NDEATH and a clean disconnect, then exit
//   {"cmd": "kill"}              exit without DISCONNECT: the broker publishes the will
// Metrics are sparkplug-payload objects: {name, alias, type, value, timestamp, properties}.
// Each command is answered with {"done": <n>} on stdout; {"event": "connected"} first.
// argv: serverUrl groupId edgeNode clientId
"use strict";
const readline = require("readline");
const sparkplug = require("sparkplug-client");

const [serverUrl, groupId, edgeNode, clientId] = process.argv.slice(2);
const client = sparkplug.newClient({
  serverUrl, groupId, edgeNode, clientId,
  username: "", password: "", version: "spBv1.0", publishDeath: true,
});
const say = (object) => process.stdout.write(JSON.stringify(object) + "\n");
let done = 0;
client.on("birth", () => say({ event: "connected" }));
client.on("error", (error) => say({ event: "error", error: String(error) }));

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  const payload = { timestamp: Date.now(), metrics: command.metrics || [] };
  switch (command.cmd) {
    case "nbirth": client.publishNodeBirth(payload); break;
    case "ndata": client.publishNodeData(payload); break;
    case "dbirth": client.publishDeviceBirth(command.device, payload); break;
    case "ddata": client.publishDeviceData(command.device, payload); break;
    case "ddeath": client.publishDeviceDeath(command.device, payload); break;
    case "skip_seq": client.incrementSeqNum(); break;
    case "stop":
      client.stop();
      setTimeout(() => process.exit(0), 300);
      break;
    case "kill": process.exit(0);
  }
  say({ done: ++done });
});
