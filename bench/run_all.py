"""Run every benchmark (``make bench``)."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
for script in ("bench_engine.py", "bench_exported.py", "bench_ui.py", "bench_render.py"):
    print(f"== {script}", flush=True)
    subprocess.run([sys.executable, os.path.join(HERE, script), *sys.argv[1:]], check=True)
