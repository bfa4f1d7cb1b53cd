"""What every `mateperf` command shares: exit codes, `-p` and `--config`, the command line.

Below both command modules (mateperf.cli and mateperf.sweep_cli), so neither imports the other
for them.
"""

from __future__ import annotations

import os
import shlex
import sys

from mateperf import phases
from mateperf.avatar import AVATAR_HELP, parse_address
from mateperf.errors import ParameterError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
CONFIG_HELP = (
    "a recommended.json from `mateperf tune` (its default profile) or `mateperf run cpu`: the "
    "settings the phase has become its defaults (-p still wins); refused on a host it was not "
    "measured on"
)
AVATAR_FLAG_HELP = AVATAR_HELP + " (the phases that measure an avatar: ipc, cpu, final; and tune)"


def with_avatar(phase: str, overrides: dict, avatar: str | None, required: bool = True) -> dict:
    """`--avatar HOST:PORT` as the phase's `avatar` parameter; a phase that measures no avatar
    refuses it when `required` (a single run asked for it) and runs without it otherwise."""
    if avatar is None:
        return overrides
    parse_address(avatar)
    if "avatar" not in phases.defaults(phase):
        if required:
            raise ParameterError(f"--avatar: phase {phase} measures no avatar")
        return overrides
    return {**overrides, "avatar": avatar}


def check_avatar(avatar: str | None) -> None:
    """Before anything is measured: the avatar answers at that address (else one line, exit
    2), and what it is, on the console."""
    if not avatar:
        return
    from mateperf.avatar import describe
    from mateperf.bridge.attach import connect_avatar

    bridge, identity = connect_avatar(avatar)
    bridge.close()
    print(f"mateperf: {describe(identity.as_dict())}", file=sys.stderr)


def command_line() -> str:
    """The command as typed, for the run's record and its reproduce line."""
    return "mateperf " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def parse_assignments(items: list[str] | None, flag: str = "-p") -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ParameterError(f"{flag} {item!r}: expected key=value")
        out[name] = value
    return out


def with_config(phase: str, overrides: dict, config: str | None, required: bool = True) -> dict:
    """The settings of a recommended.json (host-checked) under the user's explicit -p values.

    A phase without any of the settings refuses the file when `required` (a single run asked
    for it), and simply runs without it otherwise (`mateperf all`).
    """
    if config is None:
        return overrides
    from mateperf import recommended_file  # the CLI starts without pandas until a file is read

    rec = recommended_file.load(config)
    if phases.declared(phase).reads_config:  # the phase reads the file (final: the tuned arms)
        return {"config": os.path.abspath(config), **overrides}
    schema = phases.defaults(phase)
    taken = {k: str(v) for k, v in recommended_file.as_params(rec).items() if k in schema}
    if not taken:
        if required:
            raise ParameterError(
                f"--config {config}: phase {phase} takes none of its settings "
                f"({', '.join(recommended_file.SETTINGS)})"
            )
        return overrides
    return {**taken, **overrides}


def check_llama(phase: str) -> None:
    """A phase that loads the model refuses a llama-cpp-python it cannot run with (older than
    llama_features.MINIMUM_VERSION, or lacking a required binding): one line, exit code 2."""
    if phases.declared(phase).uses_model:
        from mateperf import llama_features

        llama_features.check_supported()
