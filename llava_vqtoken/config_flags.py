"""Command-line flags generated from :class:`CompressorConfig`'s fields (host-free, argparse only).

One flag per field except ``extra``: ``num_tokens`` -> ``--num-tokens``, ``name`` -> ``--compressor``.
Values are read by :meth:`CompressorConfig.parse_field` (the parser of model_args and sweep settings
too): booleans take true/false (a bare ``--compile`` is true), nullable fields take ``none``, fields with
a fixed set take its values (``FIELD_CHOICES``). A flag not typed is "not given", distinct from a typed
``none``: the spec rule (README "Which spec runs") tells the two apart.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import FIELD_CHOICES, CompressorConfig, ConfigError, field_type, string_fields

#: flags whose name differs from their field's
FLAG_NAMES = {"name": "--compressor"}
#: namespace attribute listing the compressor fields typed on the command line
GIVEN = "compressor_fields_given"
OVERRIDE_FLAG = "--override-spec"
#: exit status of every command for bad input (a one-line error on stderr)
EXIT_BAD_INPUT = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (``PROG: error: ...``) and exit status 2,
    without the usage block (``--help`` still prints it). Sub-commands inherit the class."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def model_dir_problem(model: str) -> str | None:
    """Why ``--model MODEL`` is not a model directory (no config.json in it), or None when it is one."""
    if not (Path(model).expanduser() / "config.json").is_file():
        return f"--model {model} is not a model directory: it has no config.json"
    return None


def flag_of(name: str) -> str:
    """The flag of a field: ``num_tokens`` -> ``--num-tokens``."""
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def _value_type(name: str):
    """argparse ``type=`` for a field: its string read by parse_field, then checked against its choices."""

    def parse(text: str) -> Any:
        try:
            value = CompressorConfig.parse_field(name, text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        choices = FIELD_CHOICES.get(name)
        if choices is not None and value not in choices:
            shown = ", ".join("none" if c is None else str(c) for c in choices)
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {shown}")
        return value

    parse.__name__ = name
    return parse


class _FieldAction(argparse.Action):
    """Stores the value and records that the field was typed (so a typed ``none`` is not "not given")."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        setattr(namespace, GIVEN, (*getattr(namespace, GIVEN, ()), self.dest))


def _metavar(name: str) -> str:
    base, nullable = field_type(name)
    choices = FIELD_CHOICES.get(name)
    if choices is not None:
        words = [c for c in choices if c is not None] + (["none"] if nullable else [])
        return "{" + ",".join(words) + "}"
    return base.upper() + ("|none" if nullable else "")


def add_compressor_args(p: argparse.ArgumentParser, notes: Mapping[str, str] | None = None) -> None:
    """One flag per :class:`CompressorConfig` field (and ``--override-spec``). Not typed means "not
    given": a stock checkpoint then gets the default, a VQToken checkpoint keeps its saved value.
    ``notes``: what a command does with a field when its flag is not typed, shown in the field's help."""
    defaults = CompressorConfig()
    notes = notes or {}
    p.set_defaults(**{GIVEN: ()})
    for name in string_fields():
        is_bool = field_type(name)[0] == "bool"
        p.add_argument(
            flag_of(name), dest=name, default=None, type=_value_type(name), action=_FieldAction,
            nargs="?" if is_bool else None, const=True if is_bool else None, metavar=_metavar(name),
            help=notes.get(name, f"config field {name} (default {getattr(defaults, name)!r})"),
        )
    p.add_argument(OVERRIDE_FLAG, action="store_true",
                   help="let the flags change a VQToken checkpoint's trained-with or parameter fields "
                        "(num_tokens, attention, ...): refused otherwise")


def overrides_from_args(a: argparse.Namespace) -> dict[str, Any]:
    """The compressor fields typed on the command line (a typed ``none`` included).

    Raises ConfigError for ``--num-tokens K`` with ``--adaptive RULE``: the rule picks K per video, so
    the K typed would be ignored (``CompressorConfig`` itself keeps accepting the pair: its default K)."""
    given: Sequence[str] | None = getattr(a, GIVEN, None)
    if given is None:  # a namespace built by hand: its non-None fields
        typed = {k: getattr(a, k) for k in string_fields() if getattr(a, k, None) is not None}
    else:
        typed = {k: getattr(a, k) for k in given}
    if typed.get("adaptive") is not None and typed.get("num_tokens") is not None:
        raise ConfigError(
            f"{flag_of('num_tokens')} {typed['num_tokens']} with {flag_of('adaptive')} {typed['adaptive']}: the rule "
            f"picks K per video within {flag_of('min_codes')}..{flag_of('max_codes')}, so a fixed K would be ignored; "
            f"drop {flag_of('num_tokens')} (or use {flag_of('adaptive')} none for a fixed K)"
        )
    return typed
