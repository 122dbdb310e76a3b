"""Runs until killed, with a child in its process group; prints `pgid <n>` and `child <pid>`.

`--ignore-term`: ignore SIGTERM (the worker must escalate to SIGKILL).
`--exit-on-term`: exit 0 on SIGTERM (a well-behaved trainer).
"""

import os
import signal
import subprocess
import sys
import time

if "--ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(
    [
        sys.executable,
        "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
        "\nwhile True: time.sleep(1)"
        if "--ignore-term" in sys.argv
        else "import time\nwhile True: time.sleep(1)",
    ]
)
print(f"pgid {os.getpgid(0)}", flush=True)
print(f"child {child.pid}", flush=True)
while True:
    time.sleep(0.05)
