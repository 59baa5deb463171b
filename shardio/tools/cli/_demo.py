"""``shardio demo``: write shards, read them back through DataLoader + Prefetcher, train.

Argument parsing only: the torch-using modules are imported inside `run`, so
``shardio --help`` and the other subcommands never pay for importing torch.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ._common import Output, add_output_options

#: The library's parameter names, as this command's flags (for messages).
FLAGS = {
    "data": "--data",
    "device": "--device",
    "steps": "--steps",
    "batch_size": "--batch-size",
    "workers": "--workers",
    "seed": "--seed",
    "log_every": "--log-every",
    "num_samples": "--samples",
    "workdir": "--workdir",
}

_EXAMPLES = """examples:
  shardio demo                                  # the synthetic task, 8-bit activations
  shardio demo --compare                        # train 8-bit and exact, compare the losses
  shardio demo --data tokens.shardio --device cuda --steps 1000 --batch-size 128
  shardio demo --workdir demo-data --workers 4  # keep the shards: shardio inspect them
  shardio demo --threads 2 --plot run.png       # 2 torch threads; the picture in run.png

--data expects a shardio dataset with fields "tokens" (an integer array of shape (N,))
and "label" (an integer scalar); its last fifth (at most 1024 samples) is held out.
"""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train the reference transformer end to end through shardio",
        description="Generate a synthetic sequence-classification task (or take --data), "
        "write it into shards with ShardWriter, read it back through ShardedDataset, "
        "ShardSampler, a DataLoader with workers and the Prefetcher, and train a small "
        "transformer with 8-bit saved activations, printing loss, samples/s, the time "
        "spent waiting for data, RSS and saved-activation bytes against the exact model.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", metavar="PATH", help="train on this token dataset instead")
    parser.add_argument(
        "--device", help="cpu, cuda or cuda:N (default: cuda when present, else cpu)"
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per step (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, init, order (default 0)")
    parser.add_argument(
        "--log-every", type=int, default=25, help="steps between progress lines (default 25)"
    )
    parser.add_argument(
        "--log-seconds",
        type=float,
        default=10.0,
        help="at most this many seconds between progress lines (default 10)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default: OMP_NUM_THREADS when set, else the cores "
        "idle now, 1 to 4: more threads than idle cores slow torch down)",
    )
    parser.add_argument(
        "--samples", type=int, default=8192, help="synthetic training samples (default 8192)"
    )
    parser.add_argument(
        "--workdir",
        metavar="DIR",
        help="write the synthetic shards to DIR/majority.shardio and keep them "
        "(default: a temporary directory, removed at the end)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory of the synthetic shards and print where it is",
    )
    picture = parser.add_mutually_exclusive_group()
    picture.add_argument(
        "--plot",
        metavar="FILE",
        default="shardio-demo.png",
        help="draw loss, samples/s and waiting for data into FILE (default shardio-demo.png; "
        "needs matplotlib, in the bench extra)",
    )
    picture.add_argument("--no-plot", action="store_true", help="draw no picture")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--exact", action="store_true", help="train without quantization")
    mode.add_argument(
        "--compare", action="store_true", help="train 8-bit and exact, report both losses"
    )
    add_output_options(parser, verbose_help="print a progress line every step")
    parser.set_defaults(run=run, flags=FLAGS)


def run(args: argparse.Namespace) -> int:
    from ..reference.demo import DemoConfig, run_demo

    output = Output(args)

    config = DemoConfig(
        data=args.data,
        workdir=args.workdir,
        device=args.device,
        steps=args.steps,
        batch_size=args.batch_size,
        workers=args.workers,
        seed=args.seed,
        exact=args.exact,
        compare=args.compare,
        log_every=1 if output.verbose else args.log_every,
        log_seconds=args.log_seconds,
        threads=args.threads,
        num_samples=args.samples,
        keep=args.keep,
        plot=None if args.no_plot else args.plot,
    )
    summary = run_demo(config, out=output.line)
    output.json(dataclasses.asdict(summary))
    return 0
