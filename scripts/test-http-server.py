#!/usr/bin/env python3
"""Static HTTP server for imgpipe's tests (Python stdlib only), with fault injection.

A real HTTP/1.1 server (http.server) serving files from a directory, with Range support, plus
faults a production server will not produce on demand (this is the fault-injection part):
  --drop-after N   close the connection after N body bytes ...
  --drops K        ... on the first K responses (default: every response)
  --no-ranges      ignore Range headers (answer 200 with the whole file)
  --redirect-to T  answer a GET of /r/REST with 302 and Location T + REST (T absolute, e.g.
                   another server's http://127.0.0.1:PORT/, or relative, e.g. /)
  --content-md5 F  send Content-MD5 of the whole file (also on 206, as Glance does) as F = hex
                   (Glance's form) or base64 (RFC 1864)
Prints "PORT <n>" on stdout once listening; counts requests in --log (one line each: path and
Range header or -); --header-log FILE gets one JSON object per request: {"path", "headers"}.
"""
import argparse
import base64
import hashlib
import http.server
import json
import os
import re
import socketserver
import sys
import threading

ap = argparse.ArgumentParser()
ap.add_argument("--dir", required=True)
ap.add_argument("--port", type=int, default=0)
ap.add_argument("--drop-after", type=int, default=None)
ap.add_argument("--drops", type=int, default=None)
ap.add_argument("--no-ranges", action="store_true")
ap.add_argument("--log", default=None)
ap.add_argument("--header-log", default=None)
ap.add_argument("--redirect-to", default=None)
ap.add_argument("--content-md5", choices=["hex", "base64"], default=None)
args = ap.parse_args()
md5_cache = {}


def file_md5(path):
    with lock:
        if path not in md5_cache:
            h = hashlib.md5()
            with open(path, "rb") as f:
                for b in iter(lambda: f.read(1 << 20), b""):
                    h.update(b)
            md5_cache[path] = h.digest()
        return md5_cache[path]

lock = threading.Lock()
state = {"drops": 0}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *a):
        pass

    def do_GET(self):
        path = os.path.join(args.dir, os.path.basename(self.path.split("?")[0]))
        if args.log:
            with lock, open(args.log, "a") as f:
                f.write("%s %s\n" % (self.path, self.headers.get("Range", "-")))
        if args.header_log:
            entry = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
            with lock, open(args.header_log, "a") as f:
                f.write(json.dumps(entry) + "\n")
        if args.redirect_to is not None and self.path.startswith("/r/"):
            self.send_response(302)
            self.send_header("Location", args.redirect_to + self.path[len("/r/"):])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if not os.path.isfile(path):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = os.path.getsize(path)
        start = 0
        rng = self.headers.get("Range")
        m = re.match(r"bytes=(\d+)-$", rng or "")
        if m and not args.no_ranges:
            start = int(m.group(1))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", "bytes */%d" % size)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, size - 1, size))
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "none" if args.no_ranges else "bytes")
        self.send_header("Content-Length", str(size - start))
        self.send_header("Content-Type", "application/octet-stream")
        if args.content_md5 == "hex":
            self.send_header("Content-MD5", file_md5(path).hex())
        elif args.content_md5 == "base64":
            self.send_header("Content-MD5", base64.b64encode(file_md5(path)).decode())
        self.end_headers()
        limit = None
        if args.drop_after is not None:
            with lock:
                if args.drops is None or state["drops"] < args.drops:
                    state["drops"] += 1
                    limit = args.drop_after
        sent = 0
        with open(path, "rb") as f:
            f.seek(start)
            while True:
                want = 1 << 16
                if limit is not None:
                    want = min(want, limit - sent)
                    if want <= 0:
                        # Fault: cut the connection mid-body.
                        self.wfile.flush()
                        self.connection.shutdown(2)
                        self.close_connection = True
                        return
                buf = f.read(want)
                if not buf:
                    return
                try:
                    self.wfile.write(buf)
                except (BrokenPipeError, ConnectionResetError):
                    return
                sent += len(buf)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


srv = Server(("127.0.0.1", args.port), Handler)
print("PORT %d" % srv.server_address[1], flush=True)
srv.serve_forever()
