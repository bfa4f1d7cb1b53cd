"""Markdown and plots from stored results; results/FINAL_RESULTS.md.

Reads only run directories, never measures, so the final report can be regenerated at any
time and twice in a row gives the same bytes (no timestamps of its own, fixed plot metadata).
Each phase formats its own section in mateperf/reports/<phase>.py (declared as its `REPORT`),
with the shared formatting of mateperf/reports/format.py; this module assembles the documents.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd

from mateperf import phases, results
from mateperf.host import format_fingerprint
from mateperf.reports import companion_settings, declaration, sweep
from mateperf.reports.format import table
from mateperf.reports.header import avatar_line, reproduce_command, run_header
from mateperf.reports.overview import summary_rows, variant_label, variant_row

FINAL_NAME = results.FINAL_NAME


def phase_section(
    phase: str, run: results.RunDir, plots_dir: Path, md_dir: Path, df: pd.DataFrame | None = None
) -> str:
    section = (
        sweep.section if run.info.get("kind") == "sweep" else declaration.declared(phase).section
    )
    df = run.read_frame(phase) if df is None else df
    return section(df, shown_info(run), plots_dir, md_dir)


def shown_info(run: results.RunDir) -> dict:
    """run.json as a report shows it: its status as it stands now (results.status_now: a run
    whose process is gone is interrupted), not as the file last said."""
    return {**run.info, "status": results.status_now(run.info)}


FINISHED = (results.STATUS_OK, results.STATUS_PARTIAL, results.STATUS_FAILED)


def _unfinished(runs: list[results.RunDir], listed: list[results.RunDir]) -> list[str]:
    """One line per run that did not finish: each reported one (an interrupted session, read
    from its journal), then per phase the newest one after the phase's last finished run (the
    count of earlier ones beside it), which the report leaves out."""
    lines = []
    shown = {r.run_id for r in runs}
    for r in runs:
        status = results.status_now(r.info)
        if status not in (results.STATUS_OK, results.STATUS_PARTIAL):
            cut = not r.frame_path().is_file() and r.journal_path().is_file()
            source = "its journal" if cut else "the rows it stored"
            lines.append(f"{r.run_id} ({r.phase}): {status}; reported from {source}")
    waiting: dict[str, list[tuple[results.RunDir, str]]] = {}
    for r in listed:  # oldest first: a finished run supersedes the unfinished ones before it
        status = results.status_now(r.info)
        if status in FINISHED:
            waiting.pop(r.phase, None)
        elif r.run_id not in shown:
            waiting.setdefault(r.phase, []).append((r, status))
    for items in waiting.values():
        r, status = items[-1]
        more = f" ({len(items) - 1} earlier unfinished)" if len(items) > 1 else ""
        lines.append(
            f"{r.run_id} ({r.phase}): {status}, started {r.info.get('started_at', '?')}; "
            f"not reported{more}"
        )
    return lines


def unfinished_notes(paths: list[Path] | None = None, root: Path | None = None) -> list[str]:
    """The runs FINAL_RESULTS.md lists as not finished, for the console (`mateperf report`)."""
    root = Path(root) if root else results.default_root()
    listed = results.list_runs(root)
    runs = select_runs(paths, root, listed)
    return _unfinished(runs, runs if paths else listed)


def _report_command(paths: list[Path] | None, root: Path) -> str:
    if not paths:
        return "mateperf report"
    shown = []
    for p in paths:
        p = Path(p).resolve()
        try:
            shown.append(str(Path(root.name) / p.relative_to(root.resolve())))
        except ValueError:  # outside the results root: never the machine's absolute path
            shown.append(results.shown_path(p, root))
    return "mateperf report " + " ".join(shown)


def select_runs(
    paths: list[Path] | None, root: Path | None = None, listed: list | None = None
) -> list[results.RunDir]:
    """The named runs, or per phase its representative run and its latest sweep.

    The representative is the newest finished run with the phase's default test (no variant
    parameter changed: `param(variant=N)` in the phase's Params), else the newest at all; a
    phase may also declare `representative(info)` to keep its self-check runs (the memory
    phase's injected leak) out. `listed`: the root's runs, when the caller listed them already.
    """
    if paths:
        return [results.RunDir.open(p) for p in paths]
    listed = results.list_runs(root) if listed is None else listed
    found = []
    for phase in phases.reported_phases():
        own = phases.declared(phase).representative or (lambda info: True)
        defaults = phases.defaults(phase)

        def default_test(info, own=own, phase=phase, defaults=defaults) -> bool:
            label = variant_label(phase, info.get("params", {}), defaults)
            return own(info) and label == "default"

        # a phase recorded as it goes (live) is reported from an interrupted run's journal
        cut = bool(phases.recorded_by(phase))
        found.append(
            results.latest_run(phase, root, accept=default_test, runs=listed, interrupted=cut)
            or results.latest_run(phase, root, accept=own, runs=listed, interrupted=cut)
        )
        found.append(results.latest_run(phase, root, kinds=("sweep",), runs=listed))
    return [r for r in found if r is not None]


def collect_variants(
    listed: list[results.RunDir], representative: results.RunDir
) -> list[results.RunDir]:
    """The newest finished run of each variant of the representative's phase, itself first.

    A variant is a run whose test-defining parameters differ (`param(variant=N)` in the
    phase's Params), e.g. the IPC phase against the C# peer, or the memory self-check.
    """
    phase = representative.phase
    defaults = phases.defaults(phase)
    newest: dict[str, results.RunDir] = {}
    for run in listed:
        if (
            run.phase == phase
            and run.info.get("status") in (results.STATUS_OK, results.STATUS_PARTIAL)
            and run.info.get("kind", "run") in ("run", "notebook")
            and run.has_frame()
        ):
            newest[variant_label(phase, run.info.get("params", {}), defaults)] = run
    mine = variant_label(phase, representative.info.get("params", {}), defaults)
    newest[mine] = representative
    return [representative] + [r for k, r in sorted(newest.items()) if k != mine]


def _variants_table(phase: str, runs: list[results.RunDir], host_names: dict, frame) -> str:
    defaults = phases.defaults(phase)
    rows = []
    for run in runs:
        label = variant_label(phase, run.info.get("params", {}), defaults)
        row = {
            "variant": label,
            "run": f"[`{run.run_id}`]({run.run_id}/{phase}.md)",
            "host": host_names.get(run.run_id, "?"),
        }
        row.update(variant_row(phase, frame(run), run.info))
        rows.append(row)
    return table(pd.DataFrame(rows).fillna("–"))


def _host_names(runs: list[results.RunDir]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Each run's host as "host A", "host B", ... in order of first appearance."""
    names: dict[str, str] = {}
    by_text: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    for r in runs:
        # the machine and its build, not the code revision (each run lists its own)
        text = "\n".join(
            ln
            for ln in format_fingerprint(r.info.get("fingerprint", {})).splitlines()
            if not ln.startswith("mateperf ")
        )
        if text not in by_text:
            by_text[text] = f"host {chr(ord('A') + len(by_text))}"
            members[by_text[text]] = [text]
        names[r.run_id] = by_text[text]
        members[by_text[text]].append(r.run_id)
    return names, members


def _not_measured(runs: list[results.RunDir], members: dict) -> list[str]:
    lines = []
    present = {r.phase for r in runs}
    for phase in phases.names():
        if phase not in present:
            by = phases.recorded_by(phase)
            how = f"recorded by {by}" if by else f"`mateperf run {phase}`"
            lines.append(f"- **{phase}**: no stored run ({how}).")
    no_gpu: dict[str, list[str]] = {}
    for host, (text, *_ids) in members.items():
        gpu_line = next((ln for ln in text.splitlines() if ln.startswith("GPU: ")), "")
        if gpu_line.startswith("GPU: none"):
            no_gpu.setdefault(gpu_line[5:], []).append(host)
    for reason, hosts in no_gpu.items():
        lines.append(
            f"- **GPU** on {', '.join(hosts)}: {reason}. No VRAM, offload or GPU-profile speed "
            "was measured there; the gpu phase ran only its predictions and the CPU fallback."
        )
    return lines


def summary_section(text: str) -> str:
    """The `## Summary` section of a FINAL_RESULTS.md text (for the console)."""
    match = re.search(r"^## Summary\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    return match.group(1).strip() if match else ""


def _demote(section: str) -> tuple[str, str]:
    """A phase section's own `## ` heading, and its body."""
    lines = section.strip().splitlines()
    if lines and lines[0].startswith("## "):
        return lines[0], "\n".join(lines[1:]).strip()
    return "", section.strip()


TUNE_QUESTION = "which settings keep the avatar's frame, per companion profile?"
# Per phase, the subsections FINAL_RESULTS.md keeps beside the section's lead (the rest is in
# the run's own report, one link away): what answers the phase's question.
IN_BRIEF = {
    "memory": ("Leak test",),
    "llm": ("Cold vs warm first reply",),
    "ipc": ("Headline",),
    "cpu": ("Recommendation",),
    "gpu": ("For the companion's model", "Profile selection"),
    "final": ("Every arm",),
    "live": ("Summary",),
}


def in_brief(body: str, keep: tuple[str, ...]) -> str:
    """A phase section's lead (the text before its first `### `) and the subsections named in
    `keep`; a sweep's section keeps its lead and first subsection."""
    blocks = re.split(r"(?m)^(?=### )", body.strip())
    lead, rest = blocks[0], blocks[1:]
    if not keep:
        rest = rest[:1]
    else:
        rest = [b for b in rest if any(b[4:].startswith(k) for k in keep)]
    return "\n".join(b.rstrip() + "\n" for b in [lead, *rest] if b.strip()).rstrip()


def latest_tune(root: Path, listed: list) -> tuple[results.RunDir, dict] | None:
    """The newest finished `mateperf tune` run under `root` and its recommended.json."""
    import json

    for run in sorted((r for r in listed if r.phase == "tune"), key=lambda r: r.run_id)[::-1]:
        path = run.path / "recommended.json"
        if run.info.get("status") == results.STATUS_OK and path.is_file():
            return run, json.loads(path.read_text(encoding="utf-8"))
    return None


def _hosts_line(members: dict) -> str:
    """Every host in one line (its fingerprint in `## Hosts` at the end)."""
    named = []
    for host, (text, *ids) in members.items():
        first = text.splitlines()[0] if text else "?"
        cpu = first.removeprefix("CPU: ").split(", affinity")[0]
        gpu = next((ln[5:] for ln in text.splitlines() if ln.startswith("GPU: ")), "?")
        gpu = "no GPU" if gpu.startswith("none") else gpu.split(" (")[0]
        named.append(f"**{host}**: {cpu}, {gpu} ({len(ids)} run(s))")
    return "Hosts: " + "; ".join(named) + " — fingerprints under [Hosts](#hosts)."


def write_final(paths: list[Path] | None = None, root: Path | None = None) -> Path:
    """Regenerate results/FINAL_RESULTS.md and results/plots/ from stored runs.

    First screen: the hosts in one line, the summary table, then "Settings for the companion"
    (the newest `mateperf tune` run's answer); then the runs, each phase in brief (its lead,
    its variants side by side and the subsections in IN_BRIEF, its full report one link away),
    and the hosts' fingerprints last. Byte-identical when regenerated.
    """
    root = Path(root) if root else results.default_root()
    listed = results.list_runs(root)
    runs = select_runs(paths, root, listed)
    if not runs:
        raise FileNotFoundError(f"no finished runs under {root}: run `mateperf run PHASE` first")
    # Generated output only: rebuilt from scratch so no plot of an earlier selection lingers.
    plots_root = root / "plots"
    if plots_root.is_dir():
        shutil.rmtree(plots_root)
    order = {p: i for i, p in enumerate(phases.names())}
    runs = sorted(
        runs,
        key=lambda r: (order.get(r.phase, 99), r.info.get("kind") == "sweep", r.run_id),
    )
    plain = [r for r in runs if r.info.get("kind") != "sweep"]
    frames: dict[str, pd.DataFrame] = {}

    def frame(run: results.RunDir) -> pd.DataFrame:
        """A run's table, read once for its summary rows, variants row and section."""
        if run.run_id not in frames:
            frames[run.run_id] = run.read_frame(run.phase)
        return frames[run.run_id]

    variants = {r.phase: (collect_variants(listed, r) if not paths else [r]) for r in plain}
    tuned = latest_tune(root, listed) if not paths else None
    every = runs + [v for vs in variants.values() for v in vs if v not in runs]
    host_names, members = _host_names(every + ([tuned[0]] if tuned else []))
    rows = []
    for r in plain:
        rows += summary_rows(r.phase, frame(r), r.info)
    # First screen: the hosts in one line, the summary, the companion's settings; the runs,
    # each phase in brief (its full report one link away) and the hosts' fingerprints after.
    parts = [
        "# Desktop-Mate performance — final results",
        "",
        "Generated from stored run directories; do not edit by hand. Regenerate with "
        f"`{_report_command(paths, root)}` (no measuring; the same bytes every time). "
        + _hosts_line(members),
        "",
        "## Summary",
        "",
        "Each optimisation against the original setting, measured in the phase's "
        "representative run: medians, their ratio with a bootstrap 95% CI, and the verdict "
        "of a Mann–Whitney test across trials (not a single-run percentage). Beside each row, "
        "what the original study claimed.",
        "",
        table(pd.DataFrame(rows)) if rows else "_(no phase run yet)_",
        "",
    ]
    if tuned:
        parts += [companion_settings.section(tuned[1], tuned[0].run_id), ""]
    missing = _not_measured(runs, members)
    if missing:
        parts += ["### Not measured", "", *missing, ""]
    parts += [
        "## What was measured, and where",
        "",
        "| phase | question | run | host | code | status |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs + ([tuned[0]] if tuned else []):
        kind = " (sweep)" if r.info.get("kind") == "sweep" else ""
        commit = str(r.info.get("fingerprint", {}).get("git_commit", "?"))
        code = commit[:7] + ("-dirty" if commit.endswith("-dirty") else "")
        question = phases.title(r.phase) if r.phase in phases.names() else TUNE_QUESTION
        parts.append(
            f"| {r.phase}{kind} | {question} | [`{r.run_id}`]({r.run_id}/"
            f"{r.phase}.md) | {host_names[r.run_id]} | `{code}` | {results.status_now(r.info)} |"
        )
    notes = _unfinished(runs, runs if paths else listed)
    if notes:
        parts += ["", "Runs that did not finish (interrupted: killed, or stopped by Ctrl+C):", ""]
        parts += [f"- {line}" for line in notes]
    for r in runs:
        if phases.recorded_by(r.phase) and r.info.get("kind") != "sweep":
            # no notebook wrote this run's own report: it is written here, from its rows so far
            own = phase_section(r.phase, r, r.plots_dir, r.path, frame(r))
            r.write_text(f"{r.phase}.md", run_header(shown_info(r)) + "\n" + own)
    for r in runs:
        # one folder per run: two runs of a phase must not overwrite each other's plots
        heading, body = _demote(phase_section(r.phase, r, plots_root / r.run_id, root, frame(r)))
        parts += ["", heading or f"## {r.phase}", ""]
        vs = variants.get(r.phase, [])
        if r.info.get("kind") != "sweep" and len(vs) > 1:
            parts += [
                "### Variants of this phase",
                "",
                "The newest run of each variant, side by side; the first is the one detailed "
                "below.",
                "",
                _variants_table(r.phase, vs, host_names, frame),
                "",
            ]
        live = avatar_line(r.info)
        keep = IN_BRIEF.get(r.phase, ()) if r.info.get("kind") != "sweep" else ()
        parts += [*([f"**{live[0].upper()}{live[1:]}.**", ""] if live else [])]
        parts += [in_brief(body, keep), ""]
        parts += [
            f"_In full: [`{r.run_id}/{r.phase}.md`]({r.run_id}/{r.phase}.md) on "
            f"{host_names[r.run_id]}; reproduce with `{reproduce_command(r.info)}`._",
            "",
        ]
    parts += ["## Hosts", ""]
    for host, (text, *ids) in members.items():
        parts += [f"**{host}** ({len(ids)} run(s)):", "", "```", text, "```", ""]
    out = root / FINAL_NAME
    results.atomic_write_text(out, "\n".join(parts).rstrip() + "\n")
    return out
