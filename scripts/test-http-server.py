#!/usr/bin/env python3
"""Static HTTP server for imgpipe's tests (Python stdlib only), with fault injection.

A real HTTP/1.1 server (http.server) serving files from a directory, with Range and If-Range
support and the validators a production server sends (a strong ETag from the file's size and
mtime, and Last-Modified), plus faults a production server will not produce on demand. The
fault part is a hand-written fault injector, the one fake in imgpipe's tests: a real server
cannot be made to cut, reset, stall or change an answer at a chosen byte.

  --drop-after N   close the connection after N body bytes of a response ...
  --drop-step N    close the k-th response (k = 0, 1, ...) at image offset (k + 1) * N: every
                   answer brings N new bytes, then is cut
  --drops K        ... on the first K responses (default: every response); also limits
                   --fault to the first K responses
  --no-ranges      ignore Range headers (answer 200 with the whole file)
  --no-validators  send neither ETag nor Last-Modified (and ignore If-Range)
  --redirect-to T  answer a GET of /r/REST with 302 and Location T + REST (T absolute, e.g.
                   another server's http://127.0.0.1:PORT/, or relative, e.g. /)
  --content-md5 F  send Content-MD5 of the whole file (also on 206, as Glance does) as F = hex
                   (Glance's form) or base64 (RFC 1864), or wrong-hex: the MD5 of other bytes
  --fault MODE     one persistent fault (every response, or the first --drops K), at image
                   offset --fault-at N (default 1 MiB):
      short            Content-Length as usual, but the body stops at image offset N: a clean
                       close (FIN) there (a truncated file behind a server)
      reset            the same, but the connection is reset (RST) at offset N
      stall            the body stops at offset N and the connection stays open, silent
      etag-change      the first answer is cut at offset N; every later answer carries another
                       ETag and Last-Modified and changed bytes (each byte XOR 0x5A), and a
                       Range is served (206) whatever If-Range says (a cache serving a new
                       version)
      changed-restart  the first answer is cut at offset N; every later answer is a 200 with
                       the whole changed file (same length, each byte XOR 0x5A): the image was
                       replaced, and the Range was ignored
      range-200        Range is ignored (200, whole file) and every answer stops at image
                       offset N with a clean close
      partial-to-plain a request without Range is answered 206 with the first half of the file
                       and its Content-Range
      endless          200 with a chunked body that never ends (file bytes, then zeros), sent at
                       --endless-rate bytes/s
      trickle          --trickle-bytes every --trickle-interval seconds: never silent long
                       enough to stall, never done
Prints "PORT <n>" on stdout once listening; counts requests in --log (one line each: path and
Range header or -); --header-log FILE gets one JSON object per request: {"path", "headers"}.
"""
import argparse
import base64
import email.utils
import hashlib
import http.server
import json
import os
import re
import select
import socket
import socketserver
import struct
import threading
import time

FAULTS = [
    "short",
    "reset",
    "stall",
    "etag-change",
    "changed-restart",
    "range-200",
    "partial-to-plain",
    "endless",
    "trickle",
]

ap = argparse.ArgumentParser()
ap.add_argument("--dir", required=True)
ap.add_argument("--port", type=int, default=0)
ap.add_argument("--drop-after", type=int, default=None)
ap.add_argument("--drops", type=int, default=None)
ap.add_argument("--drop-step", type=int, default=None)
ap.add_argument("--no-ranges", action="store_true")
ap.add_argument("--no-validators", action="store_true")
ap.add_argument("--log", default=None)
ap.add_argument("--header-log", default=None)
ap.add_argument("--redirect-to", default=None)
ap.add_argument("--content-md5", choices=["hex", "base64", "wrong-hex"], default=None)
ap.add_argument("--fault", choices=FAULTS, default=None)
ap.add_argument("--fault-at", type=int, default=1 << 20)
ap.add_argument("--trickle-bytes", type=int, default=256)
ap.add_argument("--trickle-interval", type=float, default=0.05)
ap.add_argument("--endless-rate", type=int, default=8 << 20)
args = ap.parse_args()
md5_cache = {}
lock = threading.Lock()
state = {"drops": 0, "responses": 0, "faults": 0}


def file_md5(path):
    with lock:
        if path not in md5_cache:
            h = hashlib.md5()
            with open(path, "rb") as f:
                for b in iter(lambda: f.read(1 << 20), b""):
                    h.update(b)
            md5_cache[path] = h.digest()
        return md5_cache[path]


def changed(buf):
    """The bytes of the image's second version: every byte XOR 0x5A (same length)."""
    return bytes(b ^ 0x5A for b in buf)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *a):
        pass

    def cut(self, how):
        """End the answer early: 'fin' (clean close), 'rst' (reset) or 'stall' (go silent)."""
        try:
            self.wfile.flush()
        except OSError:
            return
        if how == "rst":
            # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            self.connection.close()
        elif how == "stall":
            # Silent until the client gives up (or the server is killed).
            try:
                while True:
                    readable, _, _ = select.select([self.connection], [], [], 0.5)
                    if readable and not self.connection.recv(65536):
                        break
            except OSError:
                pass
        else:
            self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

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
        with lock:
            index = state["responses"]
            state["responses"] += 1
            fault = args.fault
            if fault is not None and args.drops is not None:
                if state["faults"] >= args.drops:
                    fault = None
                else:
                    state["faults"] += 1
        st = os.stat(path)
        size = st.st_size
        version = 2 if fault in ("etag-change", "changed-restart") and index > 0 else 1
        etag = '"%x-%x-v%d"' % (st.st_mtime_ns, size, version)
        last_modified = email.utils.formatdate(st.st_mtime + (version - 1) * 3600, usegmt=True)

        if fault == "endless":
            return self.endless(path)

        start = 0
        end = size  # exclusive
        rng = self.headers.get("Range")
        m = re.match(r"bytes=(\d+)-$", rng or "")
        use_range = m is not None and not args.no_ranges
        if fault in ("range-200", "changed-restart"):
            use_range = False
        if_range = self.headers.get("If-Range")
        if (
            use_range
            and if_range is not None
            and not args.no_validators
            and fault != "etag-change"
            and if_range not in (etag, last_modified)
        ):
            # RFC 9110: a failed If-Range means "send the whole current representation".
            use_range = False
        partial = False
        if use_range:
            start = int(m.group(1))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", "bytes */%d" % size)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            partial = True
        elif fault == "partial-to-plain" and rng is None:
            end = max(1, size // 2)
            partial = True
        if partial:
            self.send_response(206)
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end - 1, size))
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "none" if args.no_ranges else "bytes")
        self.send_header("Content-Length", str(end - start))
        self.send_header("Content-Type", "application/octet-stream")
        if not args.no_validators:
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", last_modified)
        if args.content_md5 == "hex":
            self.send_header("Content-MD5", file_md5(path).hex())
        elif args.content_md5 == "base64":
            self.send_header("Content-MD5", base64.b64encode(file_md5(path)).decode())
        elif args.content_md5 == "wrong-hex":
            self.send_header("Content-MD5", hashlib.md5(file_md5(path)).hexdigest())
        self.end_headers()

        # Where (as an image offset) this answer stops early, and how.
        stop, how = None, None
        if fault in ("short", "range-200"):
            stop, how = args.fault_at, "fin"
        elif fault == "reset":
            stop, how = args.fault_at, "rst"
        elif fault == "stall":
            stop, how = args.fault_at, "stall"
        elif fault in ("etag-change", "changed-restart") and index == 0:
            stop, how = args.fault_at, "fin"
        if args.drop_after is not None:
            with lock:
                if args.drops is None or state["drops"] < args.drops:
                    state["drops"] += 1
                    stop, how = start + args.drop_after, "fin"
        if args.drop_step is not None:
            stop, how = (index + 1) * args.drop_step, "fin"
        pos = start
        with open(path, "rb") as f:
            f.seek(start)
            while pos < end:
                want = min(1 << 16, end - pos)
                if fault == "trickle":
                    want = min(want, args.trickle_bytes)
                if stop is not None:
                    want = min(want, stop - pos)
                    if want <= 0:
                        return self.cut(how)
                buf = f.read(want)
                if not buf:
                    return
                if version == 2:
                    buf = changed(buf)
                try:
                    self.wfile.write(buf)
                    if fault == "trickle":
                        self.wfile.flush()
                        time.sleep(args.trickle_interval)
                except (BrokenPipeError, ConnectionResetError):
                    return
                pos += len(buf)

    def endless(self, path):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        if not args.no_validators:
            self.send_header("ETag", '"endless"')
        self.end_headers()
        with open(path, "rb") as f:
            head = f.read()
        piece = 1 << 16
        zeros = bytes(piece)
        offset = 0
        started = time.monotonic()
        try:
            while True:
                buf = head[offset : offset + piece] if offset < len(head) else zeros
                self.wfile.write(b"%x\r\n" % len(buf) + buf + b"\r\n")
                offset += len(buf)
                ahead = offset / args.endless_rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        except (BrokenPipeError, ConnectionResetError, OSError):
            return


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


srv = Server(("127.0.0.1", args.port), Handler)
print("PORT %d" % srv.server_address[1], flush=True)
srv.serve_forever()
