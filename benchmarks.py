"""``python -m benchmarks [section ...]`` in a source checkout: the suite itself lives in
``dataflow.bench``, so that an installed wheel carries it; this keeps the short command."""

import sys

from dataflow.bench.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
