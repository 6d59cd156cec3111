"""pgolf: train, quantize, compress and score one configuration (the engine that search/ drives)."""

import os

# OpenMP workers that wait for work spin for a long time by default (libgomp: 300,000 turns). On a CPU shared
# with another job, score-first TTT's many small operations then wait on spinning threads that hold the cores:
# beside one 2-thread neighbour a TTT score ran 5.4x slower against 2.4x for a plain score. A short spin keeps
# idle training speed (bench/ttt_neighbour.py, README) and brings TTT's slowdown to the plain score's. It only
# takes effect when set before torch loads OpenMP, and a user's own setting of either variable wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")
