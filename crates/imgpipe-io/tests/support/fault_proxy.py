#!/usr/bin/env python3
"""A TCP proxy (stdlib only) that cuts image downloads short, for resume tests.

    fault_proxy.py UPSTREAM_HOST:PORT CUT_AFTER_BYTES CUTS STATS_FILE

Listens on 127.0.0.1 (a free port, printed as the first stdout line) and relays every
connection to UPSTREAM byte for byte. On the first CUTS connections whose first request is a
GET of an image's data (".../file"), the connection is closed after CUT_AFTER_BYTES bytes of
the answer have been relayed. After every connection STATS_FILE is rewritten with JSON:
{"down_bytes": total bytes relayed to clients, "file_requests": [{"range": Range header or
null, "down_bytes": n, "cut": bool}, ...], "cuts": n}.
"""
import json
import socket
import sys
import threading

upstream_host, upstream_port = sys.argv[1].rsplit(":", 1)
CUT_AFTER = int(sys.argv[2])
CUTS = int(sys.argv[3])
STATS = sys.argv[4]

lock = threading.Lock()
stats = {"down_bytes": 0, "file_requests": [], "cuts": 0}


def save():
    tmp = STATS + ".tmp"
    with open(tmp, "w") as f:
        json.dump(stats, f)
    import os

    os.replace(tmp, STATS)


def pipe_up(client, server, first):
    try:
        server.sendall(first)
        while True:
            b = client.recv(65536)
            if not b:
                break
            server.sendall(b)
    except OSError:
        pass
    try:
        server.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def handle(client):
    server = socket.create_connection((upstream_host, int(upstream_port)))
    # Read the first request head to classify the connection.
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 65536:
        b = client.recv(65536)
        if not b:
            break
        head += b
    text = head.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    lines = text.split("\r\n")
    first_line = lines[0] if lines else ""
    is_file = first_line.startswith("GET ") and first_line.split(" ")[1].endswith("/file")
    rng = None
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "range":
            rng = v.strip()
    cut = False
    with lock:
        if is_file and stats["cuts"] < CUTS:
            stats["cuts"] += 1
            cut = True
    t = threading.Thread(target=pipe_up, args=(client, server, head), daemon=True)
    t.start()
    down = 0
    try:
        while True:
            b = server.recv(65536)
            if not b:
                break
            if cut and down + len(b) >= CUT_AFTER:
                b = b[: CUT_AFTER - down]
                client.sendall(b)
                down += len(b)
                break
            client.sendall(b)
            down += len(b)
    except OSError:
        pass
    for s in (client, server):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()
    with lock:
        stats["down_bytes"] += down
        if is_file:
            stats["file_requests"].append({"range": rng, "down_bytes": down, "cut": cut})
        save()


def main():
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    with lock:
        save()
    print(ls.getsockname()[1], flush=True)
    while True:
        c, _ = ls.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


main()
