// The seed's Express health route, as a wasi:http component: componentize-js
// runs this in StarlingMonkey and exports wasi:http/incoming-handler, so
// pulse serves it like any other handler. Same answers as components/health.

const HEALTH = { component: "health", status: "ok", version: "0.1.0" };

function json(status, body, headers = {}) {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

function handle(request) {
  const path = new URL(request.url).pathname;
  if (path !== "/healthcheck") {
    return json(404, { error: "not found", path });
  }
  if (request.method !== "GET" && request.method !== "HEAD") {
    return json(405, { allow: ["GET", "HEAD"], error: "method not allowed" }, { allow: "GET, HEAD" });
  }
  return json(200, HEALTH);
}

addEventListener("fetch", (event) => event.respondWith(handle(event.request)));
