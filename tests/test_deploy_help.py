"""`edge-deploy --help`: every subcommand and option has a one-line description, and every
option with a default shows it."""

from __future__ import annotations

import argparse

from deploy.cli import _parser


def _parsers(parser: argparse.ArgumentParser, path: str = "edge-deploy"):  # type: ignore[no-untyped-def]
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"{path} {name} has no description"
                yield from _parsers(sub, f"{path} {name}")


def test_every_option_is_described_with_its_default() -> None:
    seen = 0
    for path, parser in _parsers(_parser()):
        text = parser.format_help()
        for action in parser._actions:
            if not action.option_strings or action.dest == "help":
                continue
            seen += 1
            assert action.help, f"{path} {action.option_strings[0]} has no description"
            if action.default not in (None, False) and not action.required:
                assert "(default:" in action.help or "%(default)" in action.help or \
                    f"(default: {action.default}" in " ".join(text.split()), \
                    f"{path} {action.option_strings[0]} does not show its default"
    assert seen > 30
