"""BMC emulators in front of QEMU virtual machines, driven through each VM's QMP socket.

Run it with the python of the venv e2e/scripts/install-bmc-emulators.sh makes (sushy-tools
and pyghmi). Two fronts, one process each:

  qemu_bmc.py redfish --listen 127.0.0.1 --port 8000 --systems systems.json \
      [--user admin --password-file pw] [--tls-cert c.pem --tls-key k.pem]
    sushy-tools' Redfish emulator app with its systems driver replaced by a QMP-backed one;
    one process serves every system in systems.json, a JSON list of
    {"name", "uuid", "mac", "qmp", "boot_mode": "UEFI"|"Legacy"}. With --user and
    --password-file every resource except the service root needs HTTP basic auth (sushy's
    own SUSHY_EMULATOR_AUTH_FILE middleware, fed a bcrypt htpasswd written to a private
    temporary directory). sushy-tools has no SessionService, so clients use basic auth.

  qemu_bmc.py ipmi --listen 127.0.0.1 --port 623 --qmp vm.qmp --user admin \
      --password-file pw [--uuid U]
    an IPMI v2.0 (RMCP+, lanplus) BMC for one VM: pyghmi_bmc.MachineBmc (beside this
    file, shared with the agents' test BMC) with this VM as its machine.

The power model is a real server's: On = QMP status "running" (or any state of a machine
that has power, e.g. an internal error); Off = "prelaunch" (started with -S), "paused" or
"shutdown" (the guest powered itself off, QEMU kept by -no-shutdown).
  power on       from Off: system_reset then cont, a cold boot from the firmware; On: nothing
  force off      stop then system_reset (the next power on starts from the firmware)
  graceful off   system_powerdown (the ACPI power button): a guest that ignores it stays On
  reset/restart  system_reset when On; when Off it is refused (Redfish 409, IPMI 0xD5,
                 "not supported in present state"), as BMCs do: use power on
  power cycle    (IPMI) force off then power on when On; refused when Off
Boot overrides change QEMU's boot order like a BMC changes the firmware's: the VM's NIC
(device id nic0) and disk (disk0) get their `bootindex` set through QMP `qom-set`, and QEMU
hands the order to the firmware when it boots. A Once override is put in place at the next
power on or reset, and the standing (Continuous) order is put back at the one after (QEMU
gives no sign of when the firmware has read the order, so it cannot be put back sooner: a
guest that reboots itself meanwhile boots the Once device again). The boot settings live
in a small JSON file beside the QMP socket (`<qmp>.boot`), shared by both fronts. Network targets (Redfish Pxe/UefiHttp, IPMI pxe) put the NIC
first, disk targets (Hdd, IPMI disk) the disk; others (Cd, ...) are only recorded. The
boot mode is recorded only (the firmware is fixed when the VM starts).

Every power or boot command prints one line "EVENT <system> <what> <status before>" and
the server prints "LISTENING" once it accepts requests. Passwords are never printed.
"""
import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time

# The IPMI BMC and the EVENT lines are shared with agents/tests/support/ipmi_bmc.py.
from pyghmi_bmc import event, read_password

# QMP statuses of a machine without power.
OFF_STATES = frozenset(["prelaunch", "paused", "shutdown"])


class QmpError(Exception):
    pass


class Qmp:
    """A QMP client: one short connection per operation (QEMU's QMP socket serves one
    client at a time, and the Redfish and IPMI fronts may both drive the same VM)."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.boot_file = path + ".boot"

    def call(self, *commands, wait_event=None):
        """Runs the commands (a name, or (name, arguments)) in order on one connection;
        returns their results. With wait_event, also waits (up to 10 s) for that event
        after the last command, e.g. RESET, which QEMU sends once a reset is done."""
        with self.lock:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(10)
                s.connect(self.path)
            except OSError as e:
                raise QmpError(f"cannot reach QEMU's QMP socket {self.path}: {e}")
            try:
                f = s.makefile("rwb")
                greeting = json.loads(f.readline() or b"null")
                if not greeting or "QMP" not in greeting:
                    raise QmpError(f"no QMP greeting on {self.path}")
                results = []
                seen = set()
                for cmd in ("qmp_capabilities",) + commands:
                    cmd, args = (cmd, None) if isinstance(cmd, str) else cmd
                    req = {"execute": cmd}
                    if args is not None:
                        req["arguments"] = args
                    f.write(json.dumps(req).encode() + b"\n")
                    f.flush()
                    while True:
                        line = f.readline()
                        if not line:
                            raise QmpError(f"QEMU closed {self.path} during {cmd}")
                        msg = json.loads(line)
                        if "event" in msg:
                            seen.add(msg["event"])
                            continue
                        if "error" in msg:
                            raise QmpError(f"{cmd}: {msg['error'].get('desc', msg['error'])}")
                        results.append(msg.get("return"))
                        break
                while wait_event and wait_event not in seen:
                    line = f.readline()
                    if not line:
                        raise QmpError(f"QEMU closed {self.path} before {wait_event}")
                    msg = json.loads(line)
                    if "event" in msg:
                        seen.add(msg["event"])
                return results[1:]
            except OSError as e:
                raise QmpError(f"QMP {self.path}: {e}")
            finally:
                s.close()

    def status(self):
        return self.call("query-status")[0]["status"]

    def is_on(self):
        return self.status() not in OFF_STATES

    def set_boot(self, device, once):
        """device: "net", "disk" or None (no override); once: for the next boot only."""
        with self.lock:
            st = self._boot_state()
            if once:
                st["once"] = device  # put in place at the next reset
            else:
                st["once"] = None
                if device:
                    st["standing"] = device
            self._save_boot_state(st)
        if not once and device and not st["once_in_place"]:
            self._apply_order(device)

    def _boot_state(self):
        try:
            with open(self.boot_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {"standing": None, "once": None, "once_in_place": False}

    def _save_boot_state(self, st):
        tmp = self.boot_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(st, f)
        os.replace(tmp, self.boot_file)

    def _devices(self):
        """{"net"|"disk": bootindex} of the devices the VM has."""
        found = {}
        for key, dev in (("net", "nic0"), ("disk", "disk0")):
            try:
                found[key] = self.call(("qom-get", {"path": f"/machine/peripheral/{dev}",
                                                    "property": "bootindex"}))[0]
            except QmpError:
                pass
        return found

    def _first(self):
        devices = self._devices()
        return min(devices, key=devices.get) if devices else "net"

    def _apply_order(self, first):
        """Gives `first` ("net" or "disk") bootindex 1 and the other 2 (devices the VM
        lacks are skipped); QEMU passes the order to the firmware at the next reset."""
        ids = {"net": "nic0", "disk": "disk0"}
        have = self._devices()
        present = [ids[k] for k in [first] + [k for k in ids if k != first] if k in have]
        # Indexes must stay unique at every step: park them first.
        cmds = [("qom-set", {"path": f"/machine/peripheral/{d}", "property": "bootindex",
                             "value": 100 + i}) for i, d in enumerate(present)]
        cmds += [("qom-set", {"path": f"/machine/peripheral/{d}", "property": "bootindex",
                              "value": 1 + i}) for i, d in enumerate(present)]
        if cmds:
            self.call(*cmds)

    def _reset(self):
        """A reset that starts the next boot: with the Once device first if one is
        pending, else with the standing order (put back if a Once was in place)."""
        st = self._boot_state()
        if st["standing"] is None:
            st["standing"] = self._first()
        if st["once"]:
            self._apply_order(st["once"])
            st["once"], st["once_in_place"] = None, True
        elif st["once_in_place"]:
            self._apply_order(st["standing"])
            st["once_in_place"] = False
        self._save_boot_state(st)
        self.call("system_reset", wait_event="RESET")

    def power_on(self):
        if self.is_on():
            return
        self._reset()
        # The reset is carried out by QEMU's main loop; `cont` fails until it has been
        # ("Resetting the Virtual Machine is required") after a guest power-off.
        deadline = time.monotonic() + 10
        while True:
            try:
                self.call("cont")
                return
            except QmpError as e:
                if time.monotonic() > deadline or "eset" not in str(e):
                    raise
                time.sleep(0.05)

    def force_off(self):
        if not self.is_on():
            return
        self.call("stop", "system_reset")

    def graceful_off(self):
        if self.is_on():
            self.call("system_powerdown")

    def reset(self):
        """Hard reset of a machine that is on; False when it is off."""
        if not self.is_on():
            return False
        self._reset()
        return True

    def cycle(self):
        if not self.is_on():
            return False
        self.force_off()
        self.power_on()
        return True

    def nmi(self):
        self.call("inject-nmi")


# ---------------------------------------------------------------- Redfish (sushy-tools)

def redfish(opts):
    from sushy_tools import error
    from sushy_tools.emulator import main as emu
    from sushy_tools.emulator.resources.systems import fakedriver
    from werkzeug.serving import make_server

    with open(opts.systems) as f:
        systems = json.load(f)
    if not isinstance(systems, list) or not systems:
        sys.exit(f"{opts.systems}: expected a non-empty JSON list of systems")
    for s in systems:
        missing = [k for k in ("name", "uuid", "mac", "qmp") if not s.get(k)]
        if missing:
            sys.exit(f"{opts.systems}: a system lacks {', '.join(missing)}: {s}")

    class QmpDriver(fakedriver.FakeDriver):
        """sushy's fake driver (names, UUIDs, NICs, recorded boot settings) with the power
        state read from and sent to QEMU over QMP. State lives in memory only."""

        def __init__(self):
            self._systems = {}
            self._qmp = {}
            for s in systems:
                self._systems[s["uuid"]] = {
                    "uuid": s["uuid"],
                    "name": s["name"],
                    "nics": [{"mac": s["mac"]}],
                    "boot_mode": s.get("boot_mode", "UEFI"),
                    "boot_device": "Pxe",
                }
                self._qmp[s["uuid"]] = Qmp(s["qmp"])
            self._by_name = {s["name"]: s["uuid"] for s in systems}

        @property
        def driver(self):
            return "<qmp>"

        def _vm(self, identity):
            return self._qmp[self._get(identity)["uuid"]]

        def _call(self, fn):
            try:
                return fn()
            except QmpError as e:
                raise error.FishyError(str(e))

        def get_power_state(self, identity):
            vm = self._vm(identity)
            return "On" if self._call(vm.is_on) else "Off"

        def set_power_state(self, identity, state):
            vm = self._vm(identity)
            name = self._get(identity)["name"]
            before = self._call(vm.status)
            event(name, state, before)
            if state in ("On", "ForceOn"):
                self._call(vm.power_on)
            elif state == "ForceOff":
                self._call(vm.force_off)
            elif state == "GracefulShutdown":
                self._call(vm.graceful_off)
            elif state in ("ForceRestart", "GracefulRestart", "PowerCycle"):
                if not self._call(vm.reset):
                    raise error.Conflict(f"{name} is powered off: {state} needs it on; use On")
            elif state == "Nmi":
                if self._call(vm.is_on):
                    self._call(lambda: vm.call("inject-nmi"))
            else:
                raise error.BadRequest(f"unknown ResetType {state}")

        def set_boot_device(self, identity, boot_source):
            import flask

            boot = (flask.request.get_json(silent=True) or {}).get("Boot") or {}
            enabled = boot.get("BootSourceOverrideEnabled", "Continuous")
            name = self._get(identity)["name"]
            event(name, f"boot_device={boot_source} {enabled}", "-")
            device = {"Pxe": "net", "UefiHttp": "net", "Hdd": "disk"}.get(boot_source)
            if enabled == "Disabled" or boot_source == "None":
                self._call(lambda: self._vm(identity).set_boot(None, True))
            elif device:
                self._call(lambda: self._vm(identity).set_boot(device, enabled == "Once"))
            super().set_boot_device(identity, boot_source)

        def set_boot_mode(self, identity, boot_mode):
            event(self._get(identity)["name"], f"boot_mode={boot_mode}", "-")
            super().set_boot_mode(identity, boot_mode)

    state = tempfile.mkdtemp(prefix="qemu-bmc-redfish-")
    try:
        config = {"SUSHY_EMULATOR_STATE_DIR": state}
        if opts.user:
            import bcrypt

            password = read_password(opts.password_file)
            htpasswd = os.path.join(state, "htpasswd")
            fd = os.open(htpasswd, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
                f.write(f"{opts.user}:{digest}\n")
            config["SUSHY_EMULATOR_AUTH_FILE"] = htpasswd
        driver = QmpDriver.initialize(config, emu.app.logger)()
        emu.Application.systems = property(lambda self: driver)
        emu.app.configure(extra_config=config)
        ssl_context = None
        if opts.tls_cert:
            import ssl

            ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_context.load_cert_chain(opts.tls_cert, opts.tls_key)
        server = make_server(opts.listen, opts.port, emu.app, threaded=True,
                             ssl_context=ssl_context)
        print(f"LISTENING redfish {opts.listen}:{opts.port} systems="
              + ",".join(s["name"] for s in systems), flush=True)
        server.serve_forever()
    finally:
        shutil.rmtree(state, ignore_errors=True)


# ---------------------------------------------------------------- IPMI (pyghmi)

def ipmi(opts):
    from pyghmi_bmc import MachineBmc

    b = MachineBmc(Qmp(opts.qmp), opts.name, {opts.user: read_password(opts.password_file)},
                   opts.port, address=opts.listen, uuid=opts.uuid)
    b.serve()


def main():
    p = argparse.ArgumentParser("qemu_bmc", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="front", required=True)
    r = sub.add_parser("redfish", help="sushy-tools Redfish emulator over QMP")
    r.add_argument("--listen", default="127.0.0.1")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--systems", required=True, help="JSON list of {name, uuid, mac, qmp}")
    r.add_argument("--user")
    r.add_argument("--password-file")
    r.add_argument("--tls-cert")
    r.add_argument("--tls-key")
    i = sub.add_parser("ipmi", help="pyghmi IPMI BMC over QMP")
    i.add_argument("--listen", default="127.0.0.1")
    i.add_argument("--port", type=int, default=623)
    i.add_argument("--qmp", required=True)
    i.add_argument("--name", default="vm")
    i.add_argument("--uuid")
    i.add_argument("--user", required=True)
    i.add_argument("--password-file", required=True)
    opts = p.parse_args()
    if opts.front == "redfish":
        if bool(opts.user) != bool(opts.password_file):
            p.error("--user and --password-file go together")
        if bool(opts.tls_cert) != bool(opts.tls_key):
            p.error("--tls-cert and --tls-key go together")
        redfish(opts)
    else:
        ipmi(opts)


if __name__ == "__main__":
    sys.exit(main())
