# sushy-static (sushy-tools' static Redfish mockup server) with what it lacks for the
# driver tests: a SessionService that really authenticates. sushy-tools 2.2.0 has none:
# sushy-emulator serves no SessionService at all and sushy-static answers every POST with
# 204 and no token. This keeps sushy-static's GET of DMTF mockup trees and adds:
#   POST .../SessionService/Sessions {UserName, Password} -> 201, X-Auth-Token, Location
#        (503 when --max-sessions sessions are open, as BMCs cap them)
#   DELETE .../SessionService/Sessions/<id> -> 204 (by the session itself or basic auth)
#   every other request needs a valid X-Auth-Token or basic auth, else 401
#   POST and PATCH elsewhere answer 204 (or 405 with --read-only), as sushy-static does.
# Each request is logged as one line: "REQ <method> <path> auth=<token|basic|none> -> <status>".
import argparse
import base64
import json
import secrets
import sys
import threading
from http import server as http_server

from sushy_tools.static import main as static

SESSIONS = "/redfish/v1/SessionService/Sessions"


class Handler(static.RequestHandler):
    protocol_version = "HTTP/1.1"
    opts = None
    tokens = {}  # token -> session id
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def _log(self, how, status):
        print(f"REQ {self.command} {self.path} auth={how} -> {status}", flush=True)

    def _body(self):
        n = int(self.headers.get("content-length", 0))
        return self.rfile.read(n) if n else b""

    def _send(self, status, headers=(), body=b""):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _auth(self):
        token = self.headers.get("X-Auth-Token")
        if token is not None:
            with self.lock:
                return "token" if token in self.tokens else None
        basic = self.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            user, _, pw = base64.b64decode(basic[6:]).decode().partition(":")
            if (user, pw) == (self.opts.user, self.opts.password):
                return "basic"
        return None

    def _guard(self):
        how = self._auth()
        if how is None:
            self._body()
            self._log("none", 401)
            self._send(401)
        return how

    def do_GET(self):
        how = self._guard()
        if how is None:
            return
        # sushy-static's handler writes no Content-Length; answer in one piece instead.
        path = self.path.rstrip("/")
        rel = path.replace(self.REDFISH_SUBURI, "").lstrip("/")
        import os

        fpath = os.path.join(static.REDFISH_MOCKUP_FILES, rel, "index.json")
        if not path.startswith(self.REDFISH_SUBURI) or not os.path.exists(fpath):
            self._log(how, 404)
            return self._send(404)
        with open(fpath, "rb") as f:
            body = f.read()
        self._log(how, 200)
        self._send(200, [("Content-Type", "application/json")], body)

    def do_POST(self):
        if self.path.rstrip("/") == SESSIONS:
            try:
                req = json.loads(self._body() or b"{}")
            except ValueError:
                req = {}
            if (req.get("UserName"), req.get("Password")) != (self.opts.user, self.opts.password):
                self._log("login", 401)
                return self._send(401)
            with self.lock:
                if len(self.tokens) >= self.opts.max_sessions:
                    self._log("login", 503)
                    return self._send(503)
                token, sid = secrets.token_hex(16), secrets.token_hex(4)
                self.tokens[token] = sid
            self._log(f"login sid={sid}", 201)
            body = json.dumps({"@odata.id": f"{SESSIONS}/{sid}", "Id": sid}).encode()
            return self._send(
                201,
                [("X-Auth-Token", token), ("Location", f"{SESSIONS}/{sid}"),
                 ("Content-Type", "application/json")],
                body,
            )
        self._write_like_static()

    def do_PATCH(self):
        self._write_like_static()

    def _write_like_static(self):
        how = self._guard()
        if how is None:
            return
        data = self._body()
        status = 405 if self.opts.read_only else 204
        print(f"DATA {data.decode(errors='replace')}", flush=True)
        self._log(how, status)
        self._send(status)

    def do_DELETE(self):
        how = self._guard()
        if how is None:
            return
        sid = self.path.rstrip("/").rsplit("/", 1)[-1]
        with self.lock:
            found = [t for t, s in self.tokens.items() if s == sid]
            for t in found:
                del self.tokens[t]
        status = 204 if found else 404
        self._log(how, status)
        self._send(status)


def main():
    p = argparse.ArgumentParser("redfish_static")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mockup", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--max-sessions", type=int, default=4)
    p.add_argument("--read-only", action="store_true")
    opts = p.parse_args()
    static.REDFISH_MOCKUP_FILES = opts.mockup
    Handler.opts = opts
    httpd = http_server.ThreadingHTTPServer(("127.0.0.1", opts.port), Handler)
    print("LISTENING", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
