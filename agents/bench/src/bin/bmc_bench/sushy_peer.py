# The python `sushy` client doing the same power-state sweep as bmc-bench, for comparison.
# argv: ports (comma-separated), systems per emulator, concurrency, sequential calls for
# the single-call latency. Prints: wall_s single_ms p50_ms p99_ms cpu_s errors
import concurrent.futures as cf
import sys
import time

import sushy
from sushy import auth

ports = [int(p) for p in sys.argv[1].split(",")]
per, conc, singles = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
clients = {
    p: sushy.Sushy(f"http://127.0.0.1:{p}/redfish/v1", auth=auth.BasicAuth("u", "p"))
    for p in ports
}
ids = [
    (p, f"/redfish/v1/Systems/00000000-0000-4000-8000-{e:04x}{s:08x}")
    for e, p in enumerate(ports)
    for s in range(per)
]
errors = 0


def one(x):
    global errors
    t = time.perf_counter()
    try:
        clients[x[0]].get_system(x[1]).power_state
    except Exception:
        errors += 1
    return time.perf_counter() - t


one(ids[0])
single = sum(one(ids[(i + 17) % len(ids)]) for i in range(singles)) / singles
cpu0 = time.process_time()
t = time.perf_counter()
with cf.ThreadPoolExecutor(conc) as ex:
    lat = sorted(ex.map(one, ids))
wall = time.perf_counter() - t
cpu = time.process_time() - cpu0
print(
    f"{wall:.3f} {single * 1000:.2f} {lat[len(lat) // 2] * 1000:.2f} "
    f"{lat[int(len(lat) * 0.99)] * 1000:.2f} {cpu:.3f} {errors}"
)
