"""The ``hybridcl`` command: train, evaluate, push, methods."""

from __future__ import annotations

import argparse
import sys

from .errors import HybridCLError


def _cmd_train(args) -> int:
    from .train import run_from_args

    run_from_args(args)
    return 0


def _cmd_methods(args) -> int:
    from .methods import METHODS, get_method_class

    for name in METHODS:
        try:
            cls = get_method_class(name)
        except HybridCLError:
            continue
        print(f"{name:10s} {cls.description}\n{'':10s} {cls.paper}")
    return 0


def _cmd_evaluate(args) -> int:
    from .evaluate.cli import run_evaluate

    run_evaluate(args)
    return 0


def _cmd_push(args) -> int:
    from .hub import run_push

    run_push(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    return _build_parsers()[0]


def _build_parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    from .train import add_train_arguments

    parser = argparse.ArgumentParser(
        prog="hybridcl", description="Hybrid discriminative / generative / contrastive learning as Hugging Face models."
    )
    sub = parser.add_subparsers(dest="command")
    train = sub.add_parser("train", help="train a method (no arguments: the main job on the embedded digits)")
    add_train_arguments(train)
    train.set_defaults(func=_cmd_train)
    methods = sub.add_parser("methods", help="list the methods with their papers")
    methods.set_defaults(func=_cmd_methods)
    evaluate = sub.add_parser("evaluate", help="evaluate a run directory, model folder or hub id")
    evaluate.add_argument("model", help="run directory, model folder, or hub id (ORG/NAME)")
    evaluate.add_argument("--dataset", default=None, help="data set to evaluate on (default: the run's, else digits)")
    evaluate.add_argument("--protocols", default=None, help="comma-separated protocols (default: all that apply)")
    evaluate.add_argument("--output", default=None, help="where to write metrics.json (default: beside the model)")
    evaluate.add_argument("overrides", nargs="*", help="eval.key=value settings, e.g. eval.knn_k=10")
    evaluate.set_defaults(func=_cmd_evaluate)
    push = sub.add_parser("push", help="upload a run's model folder to the Hugging Face Hub")
    push.add_argument("path", help="run directory or model folder")
    push.add_argument("--repo-id", required=True, help="ORG/NAME on the Hub")
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision", default=None, help="branch to push to")
    push.add_argument("--timm-export", action="store_true", help="also write a backbone-only timm-format folder")
    push.add_argument("--dry-run", action="store_true", help="prepare and check the folder, do not upload")
    push.set_defaults(func=_cmd_push)
    return parser, {"train": train, "methods": methods, "evaluate": evaluate, "push": push}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, commands = _build_parsers()
    if not argv:
        argv = ["train"]  # `hybridcl` alone runs the main job
    if argv[0] not in commands:
        args = parser.parse_args(argv)  # --help, or an error naming the valid commands
        parser.print_help()
        return 2
    # per command, intermixed: `key=value` overrides may come before or after the flags
    args = commands[argv[0]].parse_intermixed_args(argv[1:])
    try:
        return args.func(args)
    except HybridCLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
