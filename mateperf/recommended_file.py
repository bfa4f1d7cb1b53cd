"""recommended.json: its two formats, writing it, loading it with the checks that it fits this
host, and the settings it gives a phase or the model (the rule that picks them:
mateperf.recommend).

recommended.json records the settings, the evidence and the host it was measured on; loading
it on a host that differs (another CPU, another CPU budget) is refused, naming the difference.

Two formats: 1, from the cpu phase (threads and batch, top level), and 2, from `mateperf tune`
(one entry per companion profile under `profiles`, each with every load setting, its measured
figures and its evidence; `default_profile` says which one `--config` applies). A tuned file
holds the profiles `mateperf tune -p profiles=` named (all three by default; `not_tuned` says
which are missing). `as_params` gives a file's settings in either format.
"""

from __future__ import annotations

import json
from pathlib import Path

from mateperf import companion_config
from mateperf.errors import BadInput

FORMAT = 1
TUNED_FORMAT = 2
FILE_NAME = "recommended.json"
SETTINGS = ("n_threads", "n_threads_batch", "n_batch", "n_ubatch")
# What a tuned profile sets besides SETTINGS.
TUNED_SETTINGS = (*SETTINGS, "n_gpu_layers", "n_ctx", "type_k", "type_v", "flash_attn")
# Host fields that must match for a recommendation to apply.
HOST_KEYS = ("cpu_model", "cores_logical", "usable_cpus", "affinity", "cgroup_cpu_quota")


class ConfigError(BadInput):
    """A recommended.json that is unreadable or does not fit this host."""


def host_key(fingerprint: dict) -> dict:
    return {k: fingerprint.get(k) for k in HOST_KEYS}


def write(path: Path, recommendation: dict) -> Path:
    from mateperf.results import atomic_write_text

    atomic_write_text(Path(path), json.dumps(recommendation, indent=2) + "\n")
    return Path(path)


def load(path: str | Path, fingerprint: dict | None = None) -> dict:
    """Read a recommended.json and check it fits this host; ConfigError names what does not."""
    path = Path(path).expanduser()
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--config {path}: not a readable JSON file ({exc})") from None
    if not isinstance(rec, dict) or rec.get("format") not in (FORMAT, TUNED_FORMAT):
        raise ConfigError(
            f"--config {path}: not a mateperf recommended.json (format {FORMAT} or {TUNED_FORMAT})"
        )
    if rec["format"] == TUNED_FORMAT:
        profiles = rec.get("profiles")
        if not isinstance(profiles, dict) or rec.get("default_profile") not in profiles:
            raise ConfigError(f"--config {path}: no default_profile among its profiles")
        for name, entry in profiles.items():
            _check_settings(path, (entry or {}).get("settings") or {}, f"profile {name}: ")
    else:
        _check_settings(path, rec, "")
    if fingerprint is None:
        from mateperf.host import cpu_budget

        fingerprint = cpu_budget()
    check_host(path, rec, fingerprint)
    return rec


def _check_settings(path: Path, values: dict, where: str) -> None:
    for key in SETTINGS:
        value = values.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"--config {path}: {where}{key}={value!r} must be a positive integer")
    if values["n_ubatch"] > values["n_batch"]:
        raise ConfigError(f"--config {path}: {where}n_ubatch={values['n_ubatch']} exceeds n_batch")


def check_host(path: Path, rec: dict, fingerprint: dict) -> None:
    here, there = host_key(fingerprint), rec.get("host") or {}
    for key in HOST_KEYS:
        if there.get(key) != here.get(key):
            raise ConfigError(
                f"--config {path} was measured on another host: {key} is {there.get(key)!r} "
                f"there and {here.get(key)!r} here (measure this host with `mateperf run cpu`)"
            )
    usable = int(fingerprint.get("usable_cpus") or 1)
    settings = as_params(rec)
    for key in ("n_threads", "n_threads_batch"):
        if settings[key] > usable:
            raise ConfigError(
                f"--config {path}: {key}={settings[key]} is more than the {usable} CPUs this "
                "process may use"
            )


def as_params(rec: dict, profile: str | None = None) -> dict:
    """The settings as phase parameters: a tuned file's `profile` (default: its default)."""
    if rec.get("format") == TUNED_FORMAT:
        name = profile or rec["default_profile"]
        if name not in rec["profiles"]:
            raise ConfigError(
                f"recommended.json has no {name} profile: tune tuned "
                f"{', '.join(rec['profiles'])} (`mateperf tune -p profiles=...` names them)"
            )
        entry = rec["profiles"][name]
        return {k: entry["settings"][k] for k in TUNED_SETTINGS if k in entry["settings"]}
    return {k: rec[k] for k in SETTINGS}


def not_tuned(rec: dict) -> list[str]:
    """The companion's profiles a tuned file lacks (`mateperf tune -p profiles=` left them out),
    in the companion's order; a file from before that parameter holds all of them."""
    from mateperf.gpu.companion_profiles import PROFILES

    return [name for name in PROFILES if name not in rec.get("profiles", {})]


def tuned(profiles: dict, fingerprint: dict, **source) -> dict:
    """recommended.json (format 2) from `mateperf tune`'s result, with the host it holds for,
    and per profile how the companion loads it (`companion`: its GPU_PROFILES entry, and which
    settings need the one added line in its loader: mateperf.companion_config)."""
    logical = fingerprint.get("cores_logical")
    profiles = {
        **profiles,
        "profiles": {
            name: {**entry, "companion": companion_config.loader(entry["settings"], logical)}
            for name, entry in profiles["profiles"].items()
        },
    }
    return {
        "format": TUNED_FORMAT,
        **profiles,
        "host": host_key(fingerprint),
        "hostname": fingerprint.get("hostname"),
        **source,
    }
