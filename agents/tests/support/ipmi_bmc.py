"""A pyghmi IPMI BMC for the ironpool-agents tests.

Unlike pyghmi's fakebmc it keeps the whole boot-flags parameter (EFI and persistent bits)
so `ipmitool chassis bootparam get 5` reports what was set, implements power cycle, and
prints one `EVENT <what>` line per power or boot command so tests can count them.

    python ipmi_bmc.py --port 6230 --user admin --password password
"""
import argparse
import sys

import pyghmi.ipmi.bmc as bmc


def event(what):
    print("EVENT " + what, flush=True)


class TestBmc(bmc.Bmc):
    def __init__(self, authdata, port):
        super().__init__(authdata, port=port, address="127.0.0.1")
        self.powerstate = "off"
        self.boot_flags = [0, 0, 0, 0, 0]

    def get_power_state(self):
        return self.powerstate

    def power_on(self):
        event("power_on")
        self.powerstate = "on"

    def power_off(self):
        event("power_off")
        self.powerstate = "off"

    def power_shutdown(self):
        event("power_soft")
        self.powerstate = "off"

    def power_cycle(self):
        event("power_cycle")
        if self.powerstate != "on":
            return 0xD5  # not supported in the present state, like many real BMCs
        self.powerstate = "on"

    def power_reset(self):
        event("power_reset")

    def is_active(self):
        return self.powerstate == "on"

    def get_system_boot_options(self, request, session):
        if request["data"][0] == 5:
            return session.send_ipmi_response(data=[1, 5] + self.boot_flags)
        session.send_ipmi_response(code=0x80)

    def set_system_boot_options(self, request, session):
        if request["data"][0] == 5:
            self.boot_flags = list(request["data"][1:6])
            event("boot_flags " + " ".join("%02x" % b for b in self.boot_flags))
        session.send_ipmi_response()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", default="admin")
    p.add_argument("--password", default="password")
    args = p.parse_args()
    b = TestBmc({args.user: args.password}, args.port)
    print("LISTENING", flush=True)
    b.listen()


if __name__ == "__main__":
    sys.exit(main())
