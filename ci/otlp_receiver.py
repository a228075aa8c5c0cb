#!/usr/bin/env python3
"""A minimal OTLP/HTTP trace receiver for the tests: accepts POST /v1/traces
(protobuf), decodes it with the opentelemetry-proto package, and prints one
JSON line per span on stdout. The first line is {"listening": PORT}.

Usage: otlp_receiver.py [--discard] [PORT]
Listens on 127.0.0.1, on PORT or a free port. --discard reads each request
and answers 200 without decoding or printing (a cheap sink for benchmarks).
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def value_of(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


DISCARD = "--discard" in sys.argv[1:]
PORT = next((int(a) for a in sys.argv[1:] if a.isdigit()), 0)


class Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if DISCARD:
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            resource = {a.key: value_of(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    print(json.dumps({
                        "resource": resource,
                        "name": span.name,
                        "kind": span.kind,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "status_code": span.status.code,
                        "attributes": {a.key: value_of(a.value) for a in span.attributes},
                    }), flush=True)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", PORT), Receiver)
print(json.dumps({"listening": server.server_address[1]}), flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    sys.exit(0)
