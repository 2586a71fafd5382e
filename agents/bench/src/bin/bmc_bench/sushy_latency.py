# sushy-emulator (fake driver) with an injected per-request latency, like a real BMC that
# takes 0.2-2 s to answer a Redfish GET. The Werkzeug server is threaded, so a sleeping
# request costs a thread but no CPU. `PUT /ironpool-latency?ms=N` sets the latency
# (0 at start); every other request is the emulator's own.
import sys
import time

import flask
from sushy_tools.emulator import main as emulator

latency = {"s": 0.0}


@emulator.app.before_request
def _inject_latency():
    if flask.request.path == "/ironpool-latency":
        latency["s"] = float(flask.request.args["ms"]) / 1000.0
        return ("", 204)
    if latency["s"]:
        time.sleep(latency["s"])
    return None


sys.exit(emulator.main())
