#!/usr/bin/env python
"""`main.py --eval` in a process of its own, its result written as JSON for benchmarks/pipeline.py.

    python -m benchmarks.eval_once OUT.json MAIN_FLAGS...

OUT.json holds imagenet_utils.EvaluationResult's fields (`started` on time.perf_counter's clock, which on
Linux is the system's monotonic clock: the same in every process) and its steady `rate`.
"""
import json
import sys

import main


def run(out, flags):
    result = main.run_eval(main.parse_args(flags))
    with open(out, 'w') as f:
        json.dump(dict(result._asdict(), rate=result.rate), f)


if __name__ == '__main__':
    run(sys.argv[1], sys.argv[2:])
