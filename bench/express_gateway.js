// The seed design's gateway: Express 5 + http-proxy forwarding every path to one service, in its seed
// form (no agent: http-proxy then sends `Connection: close` upstream, one new connection per request), or
// with a keep-alive agent when BENCH_KEEPALIVE=1. It does no authentication, rate limiting or logging, so
// it is the floor our gateway must beat while doing all of those. Started by bench/run.py.
"use strict";

const http = require("node:http");
const express = require("express");
const httpProxy = require("http-proxy");

const port = Number(process.env.BENCH_PORT);
const target = process.env.BENCH_TARGET;
const keepAlive = process.env.BENCH_KEEPALIVE === "1";

const proxy = httpProxy.createProxyServer(
  keepAlive ? { agent: new http.Agent({ keepAlive: true, maxSockets: 128 }) } : {},
);
proxy.on("error", (err, req, res) => {
  if (!res.headersSent) {
    res.writeHead(502, { "Content-Type": "application/json" });
  }
  res.end(JSON.stringify({ error: { code: "bad_gateway", message: String(err.code || err) } }));
});

const app = express();
// Express 5 (path-to-regexp 8) rejects a bare '*': the wildcard needs a name.
app.all("/*splat", (req, res) => {
  proxy.web(req, res, { target });
});

app.listen(port, "127.0.0.1", () => {
  console.log(`express reference listening on 127.0.0.1:${port} -> ${target} (keep-alive: ${keepAlive})`);
});
