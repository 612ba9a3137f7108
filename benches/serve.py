#!/usr/bin/env python3
"""Local HTTP/1.1 file server for benches/compare.sh (stdlib only).

    benches/serve.py DIR

Serves DIR like `python3 -m http.server`, but sends file bodies with sendfile(2) so the
server costs almost no CPU: on a 2-core machine a copying server would steal cycles from
whichever contender downloads. Prints "PORT <n>" once listening.
"""
import functools
import http.server
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *a):
        pass

    def copyfile(self, source, outputfile):
        outputfile.flush()
        self.connection.sendfile(source)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    handler = functools.partial(Handler, directory=sys.argv[1])
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    print("PORT %d" % srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
