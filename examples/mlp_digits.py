"""Train a tanh MLP on scikit-learn's bundled digits with SGD through the engine,
print the test accuracy, and write a profile of one training step.

    python examples/mlp_digits.py [--epochs 30] [--executor threads] [--out profile-out]
                                  [--fast]

``--fast`` is the CI-sized run: 3 epochs of a 32-unit hidden layer, no progress bar.
"""

from __future__ import annotations

import argparse

from dataflow.demo import run_demo


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--executor", default="threads")
    parser.add_argument("--out", default="profile-out")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--fast", action="store_true",
                        help="CI-sized: 3 epochs, 32 hidden units, no progress bar")
    args = parser.parse_args(argv)
    if args.fast:
        args.epochs, args.hidden, args.no_progress = 3, 32, True
    return run_demo(args.out, epochs=args.epochs, hidden=args.hidden, executor=args.executor,
                    show_progress=not args.no_progress)


if __name__ == "__main__":
    main()
