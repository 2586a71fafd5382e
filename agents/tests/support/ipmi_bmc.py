"""A pyghmi IPMI BMC for the ironpool-agents tests: e2e/support/pyghmi_bmc.py's MachineBmc
(shared with the e2e QEMU BMC) in front of a machine that exists only in memory.

The machine starts off; power cycle and reset of a machine that is off are refused
(0xD5), as many real BMCs do. One `EVENT vm <what> <on|off>` line per power or boot command
lets tests count them.

    python ipmi_bmc.py --port 6230 --user admin --password-file pw
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "..", "..", "e2e", "support"))
from pyghmi_bmc import MachineBmc, read_password  # noqa: E402


class MemoryMachine:
    """A machine's power and boot override, in memory."""

    def __init__(self):
        self.on = False
        self.boot = None

    def status(self):
        return "on" if self.on else "off"

    def is_on(self):
        return self.on

    def power_on(self):
        self.on = True

    def force_off(self):
        self.on = False

    def graceful_off(self):
        self.on = False

    def reset(self):
        return self.on

    def cycle(self):
        return self.on

    def nmi(self):
        pass

    def set_boot(self, device, once):
        self.boot = (device, once)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", default="admin")
    p.add_argument("--password-file", required=True)
    args = p.parse_args()
    MachineBmc(MemoryMachine(), "vm", {args.user: read_password(args.password_file)},
               args.port).serve()


if __name__ == "__main__":
    sys.exit(main())
