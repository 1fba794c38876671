"""One convention for bindspace's command lines, and one error-to-exit-code wrapper.

Two styles, each where it fits:

* **Hydra** (``bindspace-train``, ``bindspace-eval``): runs are compositions of config groups
  (``model=base anchor=text curriculum=progressive``) that sweep (``-m seed=0,1,2``) and are recorded
  in ``.hydra/``; their ``--help`` is Hydra's, with bindspace's template (``configs/hydra/help``).
  Both check what the command line composes (:func:`check_hydra_overrides` with the command's own
  checks) before they import their pipeline, Lightning and timm: an error costs seconds, not the imports.
* **key=value** (``bindspace-embed``, ``bindspace-search``, ``bindspace-connect``): one-shot tools whose
  options are few and flat; they read like the Hydra commands (``ckpt_path=... k=5``) without composing
  anything.
* **sub-commands** (``bindspace-data check|shard``, ``bindspace-report``): argparse, through
  :class:`OneLineArgumentParser`.

Every command answers ``--help`` with its options and an example, names an unknown option with the
closest valid one in one line, and exits 0 (done), 2 (a user error: one line naming the file, key or
value) or another code its docs give (3: non-finite training; 128+N: stopped by signal N).
"""

from __future__ import annotations

import argparse
import difflib
import errno
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bindspace.errors import ConfigError

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def did_you_mean(name: str, candidates: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or nothing."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_output(
    out: str | Path,
    suffix: str,
    what: str,
    inputs: Mapping[str, str | Path] | None = None,
    key: str = "out",
    label: str | None = None,
) -> Path:
    """``out`` as a file a command may write, checked before any compute: it ends in ``suffix`` (the format
    written), is no folder, and is none of the command's ``inputs`` (name -> path; symlinks and hard links
    seen through), which writing it would replace.

    Args:
        label: what the message names instead of ``key=out``, for a file the command derives from its
            arguments (``bindspace-connect``'s ``<out>.metrics.json``); a folder in its place is then to be moved.

    Raises:
        ConfigError: one line naming ``key``, ``out`` (or ``label``) and the fault.
    """
    out = Path(out)
    subject = label or f"{key}={out}"
    if out.suffix != suffix:
        raise ConfigError(f"{subject}: {what} is a {suffix} file")
    if out.is_dir():
        fix = "give its name" if label is None else "move the folder away"
        raise ConfigError(f"{subject}: is a folder; {what} is a {suffix} file ({fix})")
    for name, path in (inputs or {}).items():
        if out.is_file() and Path(path).is_file() and out.samefile(path):
            raise ConfigError(f"{subject}: is {name}={path} itself; writing {what} would replace it")
    return out


class HelpRequested(Exception):
    """``--help`` was given: the command prints its help and exits 0."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


@dataclass
class KeyValueCommand:
    """A ``key=value`` command line: its options (with defaults and help), required keys and examples.

    Values are typed like their defaults: booleans (``true``/``false``), positive integers, strings.
    """

    prog: str
    summary: str
    options: Mapping[str, tuple[Any, str]]  # key -> (default, help)
    required: Mapping[str, str] = field(default_factory=dict)  # key -> help
    examples: Sequence[str] = ()

    @property
    def defaults(self) -> dict[str, Any]:
        return {k: default for k, (default, _) in self.options.items()}

    def help(self) -> str:
        width = max(len(k) for k in [*self.required, *self.options]) + 2
        lines = [f"usage: {self.prog} key=value ...", "", self.summary, "", "required:"]
        lines += [f"  {k + '=':<{width}} {text}" for k, text in self.required.items()]
        lines += ["", "options:"]
        for k, (default, text) in self.options.items():
            shown = str(default).lower() if isinstance(default, bool) else (default if default != "" else "(none)")
            lines.append(f"  {k + '=':<{width}} {text} [default: {shown}]")
        if self.examples:
            lines += ["", "examples:", *(f"  {e}" for e in self.examples)]
        return "\n".join(lines)

    def parse(self, argv: Sequence[str]) -> dict[str, Any]:
        """``["k=v", ...]`` -> a dict typed like the defaults.

        Raises:
            HelpRequested: ``-h`` or ``--help`` among the arguments.
            ConfigError: an unknown key (with the closest valid one), a malformed or mistyped value,
                or a missing required key, in one line.
        """
        if any(a in ("-h", "--help") for a in argv):
            raise HelpRequested(self.help())
        known = [*self.required, *self.options]
        out: dict[str, Any] = self.defaults
        for arg in argv:
            key, sep, value = arg.partition("=")
            if arg.startswith("-"):
                hint = did_you_mean(arg.lstrip("-").split("=")[0], known) or did_you_mean(arg, ["-h", "--help"])
                raise ConfigError(f"unknown option {arg!r}{hint}; options are key=value (see {self.prog} --help)")
            if not sep or not key:
                raise ConfigError(f"arguments are key=value, got {arg!r} (see {self.prog} --help)")
            if key not in known:
                raise ConfigError(f"unknown key {key!r}{did_you_mean(key, known)}; keys are {sorted(known)}")
            kind = type(self.options[key][0]) if key in self.options else str
            if kind is bool:
                if value.lower() not in _TRUE + _FALSE:
                    raise ConfigError(f"{key} must be true or false, got {value!r}")
                out[key] = value.lower() in _TRUE
            elif kind is int:
                if not value.isdigit() or int(value) < 1:
                    raise ConfigError(f"{key} must be a positive integer, got {value!r}")
                out[key] = int(value)
            else:
                out[key] = value
        missing = [k for k in self.required if not out.get(k)]
        if missing:
            raise ConfigError(f"missing {', '.join(f'{k}=...' for k in missing)} (see {self.prog} --help)")
        return out


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line naming the bad option and the closest valid one, exit 2."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse checks required arguments before it reports unknown options, so `prog --hepl` would
        # say only that a command is missing: the unknown option is the error the user made.
        unknown = self._unknown_options()
        if unknown and not message.startswith("unrecognized arguments:"):
            message = f"unrecognized arguments: {unknown[0]}"
        if message.startswith("unrecognized arguments:"):
            bad = message.split(":", 1)[1].split()
            message = f"{message}{did_you_mean(bad[0], self._option_strings()) if bad else ''}"
        elif "invalid choice:" in message:
            message = message.split(" (choose from")[0] + self._closest_choice(message)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _unknown_options(self) -> list[str]:
        """The command line's ``-x``/``--xx`` tokens that no parser here defines, nor abbreviates (argparse
        takes a prefix of a long option); negative numbers are values."""
        known = self._option_strings()

        def defined(name: str) -> bool:
            return name in known or (name.startswith("--") and any(o.startswith(name) for o in known))

        options = [a for a in getattr(self, "_argv", []) if a.startswith("-") and a != "-" and not _is_number(a)]
        return [a for a in options if not defined(a.split("=")[0])]

    def _option_strings(self) -> list[str]:
        """Every option of this parser and of its sub-commands (their leftovers are reported up here)."""
        options = []
        for action in self._actions:
            options += action.option_strings
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    options += [o for a in sub._actions for o in a.option_strings if o not in options]
        return options

    def _closest_choice(self, message: str) -> str:
        bad = message.split("invalid choice:", 1)[1].strip().split()[0].strip("'")
        choices = [c for action in self._actions if action.choices for c in action.choices]
        return did_you_mean(bad, [str(c) for c in choices])


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def run_command(prog: str, body: Callable[[], int | None]) -> int:
    """Run a command's body with bindspace's exit codes: 0, or 2 with one line for a user error.

    A :class:`HelpRequested` prints the help (exit 0); a ``ConfigError`` (which includes checkpoint
    and data-file errors) prints ``<prog>: error: <message>``; a full disk prints one line too.
    """
    try:
        return int(body() or 0)
    except HelpRequested as request:
        print(request.text)
        return 0
    except ConfigError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"{prog}: error: disk full: {err.strerror}", file=sys.stderr)
        return 2


# Hydra flags that are not overrides: with any of them, Hydra parses the command line itself.
# Flags that print the composed config instead of running it (with the value each takes, if any): the
# overrides beside them are still checked, as the config they print is the one the run would compose.
PRINT_FLAGS = {"--cfg": True, "-c": True, "--package": True, "-p": True, "--resolve": False}
HYDRA_FLAGS = ("-h", "--help", "--hydra-help", "--info", "-i", "--cfg", "-c", "--resolve", "--package", "-p", "-m",
               "--multirun", "--shell-completion", "-sc", "--config-path", "-cp", "--config-name", "-cn",
               "--config-dir", "-cd", "--experimental-rerun", "--version")  # fmt: skip


def check_hydra_overrides(config_name: str, argv: Sequence[str], check: Callable[[Any], None] | None = None) -> None:
    """Compose ``config_name`` with the command line's overrides once, before Hydra runs, for one-line errors.

    Hydra reports an unknown key or option in several lines with exit 1; this names the key and the
    closest valid one in one :class:`ConfigError` line. A sweep (``-m``) is checked value by value before
    its first job starts (every value of every swept key, the other keys at their first value), so a typo
    in its last value does not surface after the jobs before it have trained. The flags that print the config
    (``--cfg job``, ``--package``, ``--resolve``) are set aside and the overrides beside them checked; Hydra's
    other flags and the processes Lightning's DDP launcher starts (``LOCAL_RANK`` set) are left to Hydra unchecked.
    ``check``: the command's own checks of each composed config (a ``DictConfig``), run when the command
    line runs the command (not with the printing flags).

    Raises:
        ConfigError: an override that does not compose, or the first error ``check`` raises.
    """
    import os

    argv = list(argv)
    sweep = any(a in ("-m", "--multirun") for a in argv)
    argv = [a for a in argv if a not in ("-m", "--multirun")]
    printing = len(_without_print_flags(argv)) != len(argv)
    argv = _without_print_flags(argv)
    if os.environ.get("LOCAL_RANK"):
        return
    flags = [a for a in argv if a.startswith("-") and a.split("=")[0] not in HYDRA_FLAGS]
    if flags:  # Hydra would answer with its override lexer's error ("LexerNoViableAltException: --hepl ^")
        hint = did_you_mean(flags[0].split("=")[0], HYDRA_FLAGS)
        raise ConfigError(f"unknown option {flags[0]!r}{hint}; overrides are key=value (see --help)")
    if any(a.split("=")[0] in HYDRA_FLAGS for a in argv):
        return
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException

    overrides = [a for a in argv if not a.lstrip("+~").startswith(("hydra.", "hydra/"))]  # Hydra's own: its checks
    try:
        jobs = sweep_check_jobs(overrides) if sweep else [overrides]
        if jobs is None:  # a glob() sweep: its values come from the config groups, which Hydra expands itself
            return
        with initialize_config_module("bindspace.configs", version_base="1.3"):
            composed = [compose(config_name, overrides=job) for job in jobs]
    except HydraException as err:
        raise ConfigError(_one_line_hydra_error(err, config_name, compose, initialize_config_module)) from None
    if check is not None and not printing:
        for cfg in composed:
            check(cfg)


def resolved_before_launch(cfg: Any) -> dict[str, Any] | None:
    """A config composed from the command line (a ``DictConfig``), resolved to plain data before Hydra
    launches the job: the run folder Hydra picks at launch (``paths.output_dir: ${hydra:...}``) is a
    placeholder, as the checks write nothing. None when another interpolation needs the launched job
    (the run's own checks, which are the same, then report its errors)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    cfg = cfg.copy()
    paths = OmegaConf.to_container(cfg.paths, resolve=False) if "paths" in cfg else {}
    if str(paths.get("output_dir", "")).startswith("${hydra:"):
        cfg.paths.output_dir = "<run folder chosen at launch>"
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        return None


def _without_print_flags(argv: Sequence[str]) -> list[str]:
    """``argv`` without the config-printing flags of :data:`PRINT_FLAGS` and their values (``--cfg job``)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name, has_value, _ = arg.partition("=")
        if name in PRINT_FLAGS:
            skip = PRINT_FLAGS[name] and not has_value
            continue
        kept.append(arg)
    return kept


def sweep_check_jobs(overrides: Sequence[str]) -> list[list[str]] | None:
    """The override lists that check every value of a sweep: each swept key's values in turn, the rest first.

    ``seed=0,1,2 finetune=frozen,lora_r4`` gives ``[seed=0, finetune=frozen]``, ``[seed=1, ...]``,
    ``[seed=2, ...]`` and ``[seed=0, finetune=lora_r4]``: as many compositions as values, not their product.
    None when a value is a ``glob(...)`` sweep (its values are the config group's, unknown here).

    Raises:
        hydra.errors.HydraException: an override that does not parse (Hydra's ``OverrideParseException``).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType

    choices = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
            return None
        key = override.get_key_element()
        if override.is_sweep_override():
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([str(override.input_line)])
    base = [values[0] for values in choices]
    jobs = [base]
    for i, values in enumerate(choices):
        jobs += [[*base[:i], value, *base[i + 1 :]] for value in values[1:]]
    return jobs


def hydra_help(config_name: str, argv: Sequence[str]) -> str | None:
    """What Hydra's ``--help`` prints for ``config_name``, without its cost; None to leave it to Hydra.

    Hydra lists the config groups of the help template (``$APP_CONFIG_GROUPS``) with one deep copy of
    the whole config store per group and per option list, over a hundred here: 5-9 s. This lists them
    from one copy, as Hydra does (the groups outside ``hydra/``, recursively, each with its sorted
    options). Only templates with no other placeholder, and command lines of ``--help`` and overrides
    alone, are answered here; ``tests/test_cli_convention.py`` checks the text equals Hydra's.
    """
    import os
    import string

    flags = [a for a in argv if a.startswith("-")]
    if os.environ.get("LOCAL_RANK") or not flags or any(a not in ("-h", "--help") for a in flags):
        return None
    overrides = [a for a in argv if not a.startswith("-")]
    try:
        from hydra import compose, initialize_config_module
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.object_type import ObjectType
        from omegaconf import OmegaConf

        with initialize_config_module("bindspace.configs", version_base="1.3"):
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
            template = string.Template(OmegaConf.to_container(cfg.hydra.help, resolve=False)["template"])
            if {m.group("named") or m.group("braced") for m in template.pattern.finditer(template.template)} - {
                "APP_CONFIG_GROUPS",
                None,
            }:
                return None  # a placeholder only Hydra fills ($FLAGS_HELP, $CONFIG, ...)
            _, repo = GlobalHydra.instance().config_loader()._parse_overrides_and_create_caching_repo(None, [])

            def groups(parent: str) -> list[str]:
                found = []
                for name in repo.get_group_options(parent, ObjectType.GROUP):
                    group = f"{parent}/{name}" if parent else name
                    if repo.get_group_options(group, ObjectType.CONFIG):
                        found.append(group)
                    found += groups(group)
                return found

            listed = sorted(g for g in groups("") if not (g == "hydra" or g.startswith("hydra/")))
            lines = "".join(f"{g}: {', '.join(sorted(repo.get_group_options(g, ObjectType.CONFIG)))}\n" for g in listed)
        return template.substitute(APP_CONFIG_GROUPS=lines)
    except Exception:  # Hydra's internals moved, or anything unexpected: Hydra's own --help answers
        return None


def run_hydra_command(
    config_name: str, error_prefix: str, hydra_main: Callable[[], Any], check: Callable[[Any], None] | None = None
) -> None:
    """A Hydra entry point: ``--help`` answered (:func:`hydra_help`), the command line's overrides (and
    ``check`` on what they compose) checked first, one line and exit 2 for an error, then ``hydra_main``."""
    text = hydra_help(config_name, sys.argv[1:])
    if text is not None:
        print(text)
        return
    try:
        check_hydra_overrides(config_name, sys.argv[1:], check)
    except ConfigError as err:
        print(f"{error_prefix}: {err}", file=sys.stderr)
        sys.exit(2)
    hydra_main()


def _one_line_hydra_error(err: Exception, config_name: str, compose, initialize) -> str:
    try:
        return _describe_hydra_error(err, config_name, compose, initialize)
    except Exception:  # the hint is a courtesy: never let it hide the error itself
        return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


def _describe_hydra_error(err: Exception, config_name: str, compose, initialize) -> str:
    message = str(err)
    first = message.strip().splitlines()[0] if message.strip() else type(err).__name__
    if first.startswith("Could not override '"):
        from omegaconf import DictConfig, OmegaConf

        key = first.split("'")[1]
        from bindspace.utils.config_migration import RENAMED_KEYS

        if key in RENAMED_KEYS:
            return f"unknown key {key!r}: it is {RENAMED_KEYS[key]!r} now"
        with initialize("bindspace.configs", version_base="1.3"):
            defaults = compose(config_name)
        # The first component that is not in the config is the typo: modalities.tactle.trunk.width -> tactle.
        parts, absent = key.split("."), object()
        depth = next(
            (
                i
                for i in range(len(parts))
                if OmegaConf.select(defaults, ".".join(parts[: i + 1]), default=absent) is absent
            ),
            len(parts) - 1,
        )
        parent, leaf = ".".join(parts[:depth]), parts[depth]
        node = OmegaConf.select(defaults, parent) if parent else defaults
        keys = list(node.keys()) if isinstance(node, DictConfig) else []
        if not parent:
            keys += ["anchor", "curriculum", "data", "experiment", "finetune", "logger", "model", "prompts", "trainer"]
        hint = did_you_mean(leaf, [str(k) for k in keys])
        if hint:
            hint = hint.replace("'", f"'{parent}.", 1) if parent else hint
        # A near miss is a typo; only a key with no near miss may be a new one (which the checks may refuse too).
        return f"unknown key {key!r}" + (hint or f"; a key that is not in the config needs a leading + (+{key}=...)")
    if first.startswith("In '") and "Could not find" in first:
        options = [line.strip() for line in message.splitlines() if line.startswith("\t") and "=" not in line]
        wanted = first.split("Could not find '")[1].rstrip("'")
        group, _, name = wanted.rpartition("/")
        return f"no {group} config named {name!r}{did_you_mean(name, options)}; available: {', '.join(options)}"
    return " ".join(line.strip() for line in message.strip().splitlines() if line.strip() and "hydra.cc" not in line)
