// The original Express app, for `just bench` only: the same answer to
// GET /healthcheck as the health component. Usage: node app.js PORT
const express = require("express");

const app = express();
app.get("/healthcheck", (req, res) => {
  res.json({ component: "health", status: "ok", version: "0.1.0" });
});

const port = Number(process.argv[2] || 3000);
app.listen(port, "127.0.0.1", () => console.error(`express listening on ${port}`));
