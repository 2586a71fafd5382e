"""The IPMI BMC both of Ironpool's pyghmi emulators are: an IPMI v2.0 (RMCP+, lanplus)
pyghmi.ipmi.bmc.Bmc in front of a machine backend.

Used by e2e/support/qemu_bmc.py (`ipmi` front: the backend is a QEMU VM driven over QMP)
and agents/tests/support/ipmi_bmc.py (the backend is a machine in memory). Run either with
the python of the venv e2e/scripts/install-bmc-emulators.sh makes.

A backend has:
  status()        a word for EVENT lines: the state before a command
  is_on()         whether the machine has power
  power_on(), force_off(), graceful_off()
  reset(), cycle() True when done; False when the machine is off, and the BMC answers
                  0xD5 "not supported in present state", as real BMCs do
  nmi()           a diagnostic interrupt (only called when on)
  set_boot(device, once)  device "net", "disk" or None (no override)

Unlike pyghmi's fakebmc, the boot-flags parameter (5) is kept whole (valid, persistent and
EFI bits) so `ipmitool chassis bootparam get 5` reads back what was set, and power cycle
is implemented. Every power or boot command prints one line "EVENT <system> <what>
<status before>"; `serve` prints "LISTENING ipmi <address>:<port> system=<name>" once it
accepts requests. Passwords are never printed.
"""
import sys
import uuid as uuidlib

import pyghmi.ipmi.bmc as bmc

# IPMI completion code: "command not supported in present state".
NOT_IN_PRESENT_STATE = 0xD5


def event(system, what, before):
    print(f"EVENT {system} {what} {before}", flush=True)


def read_password(path):
    """The password in file `path` (one line); exits with the reason when there is none."""
    if not path:
        sys.exit("--password-file is required with --user")
    with open(path) as f:
        password = f.read().rstrip("\n")
    if not password:
        sys.exit(f"{path} is empty")
    return password


class MachineBmc(bmc.Bmc):
    """The BMC of one machine `name`, serving `authdata` ({user: password})."""

    def __init__(self, machine, name, authdata, port, address="127.0.0.1", uuid=None):
        self.guid = uuidlib.UUID(uuid) if uuid else None
        super().__init__(authdata, port=port, address=address, bmcuuid=self.guid)
        self.machine = machine
        self.name = name
        self.where = f"{address}:{port}"
        # Boot flags parameter 5, kept whole (valid, persistent and EFI bits).
        self.boot_flags = [0, 0, 0, 0, 0]

    def _event(self, what):
        event(self.name, what, self.machine.status())

    def get_system_guid(self):
        return self.guid or uuidlib.UUID(int=0)

    def get_power_state(self):
        return "on" if self.machine.is_on() else "off"

    def is_active(self):
        return self.machine.is_on()

    def power_on(self):
        self._event("power_on")
        self.machine.power_on()

    def power_off(self):
        self._event("power_off")
        self.machine.force_off()

    def power_shutdown(self):
        self._event("power_soft")
        self.machine.graceful_off()

    def power_reset(self):
        self._event("power_reset")
        if not self.machine.reset():
            return NOT_IN_PRESENT_STATE

    def power_cycle(self):
        self._event("power_cycle")
        if not self.machine.cycle():
            return NOT_IN_PRESENT_STATE

    def pulse_diag(self):
        self._event("power_diag")
        if self.machine.is_on():
            self.machine.nmi()

    def get_boot_device(self):
        return (self.boot_flags[1] >> 2) & 0x0F

    def get_system_boot_options(self, request, session):
        if request["data"][0] == 5:
            return session.send_ipmi_response(data=[1, 5] + self.boot_flags)
        session.send_ipmi_response(code=0x80)

    def set_system_boot_options(self, request, session):
        if request["data"][0] == 5:
            self.boot_flags = list(request["data"][1:6])
            event(self.name, "boot_flags=" + ",".join("%02x" % b for b in self.boot_flags), "-")
            valid, persistent = self.boot_flags[0] & 0x80, self.boot_flags[0] & 0x40
            device = {1: "net", 2: "disk"}.get((self.boot_flags[1] >> 2) & 0x0F)
            if not valid:
                self.machine.set_boot(None, True)
            elif device:
                self.machine.set_boot(device, not persistent)
        session.send_ipmi_response()

    def serve(self):
        """Answers IPMI requests until the process is stopped."""
        print(f"LISTENING ipmi {self.where} system={self.name}", flush=True)
        self.listen()
