"""Start and kill a dummy program COUNT times, one at a time, beside one long-running program:
the restart loop memtrace report must flag (sleep) and the steady program it must not (tail).
Python's own sleep keeps the loop free of other short-lived programs.

    python3 tests/lab/restart_loop.py [COUNT]
"""

import subprocess
import sys
import time

count = int(sys.argv[1]) if len(sys.argv) > 1 else 5
steady = subprocess.Popen(["tail", "-f", "/dev/null"])
for _ in range(count):
    child = subprocess.Popen(["sleep", "30"])
    time.sleep(0.3)
    child.kill()
    child.wait()
    time.sleep(0.2)
steady.kill()
steady.wait()
print(f"restart_loop: started and killed sleep {count} times beside one tail")
