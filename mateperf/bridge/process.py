"""Run a bridge peer (Python or the C# core under Mono) or the raw floor in its own process.

Every peer program speaks the same small contract on stdio: it prints
``{"event": "listening", "port": N}`` when ready, stops on Ctrl+C or SIGTERM, and when its
stdin closes only if given ``--stop-on-stdin-eof`` (the headless peers and the floor alike),
which `start_peer` and `start_floor` pass: the stdin pipe ties the child to this process, so a
parent that dies (its pipe ends with it) leaves no peer behind. Then it prints
``{"event": "stopped", "counters": {...}}``. That lets the benchmarks and tests treat a Unity
stand-in as a black box, exactly as the Python side treats Unity.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from mateperf.bridge.frames import check_frame_busy
from mateperf.bridge.protocol import DEFAULT_HOST, MAX_LINE_BYTES
from mateperf.params import PEER_KINDS

# unity/ is a Unity package: the core (no UnityEngine) and PythonBridge.cs under Runtime/, and
# the headless host under Headless~/ (a folder Unity ignores), with its .NET SDK projects
UNITY_DIR = Path(__file__).resolve().parents[2] / "unity"
CORE_DIR = UNITY_DIR / "Runtime" / "Core"
PYTHON_BRIDGE_CS = UNITY_DIR / "Runtime" / "PythonBridge" / "PythonBridge.cs"
HEADLESS_DIR = UNITY_DIR / "Headless~"
HOST_DIR = HEADLESS_DIR / "MatePeer"
NEWTONSOFT_CANDIDATES = (
    "/usr/lib/cli/Newtonsoft.Json-5.0/Newtonsoft.Json.dll",
    "/usr/lib/mono/gac/Newtonsoft.Json/6.0.0.0__b9a188c8922137c6/Newtonsoft.Json.dll",
)


class PeerStartError(RuntimeError):
    """A peer process did not come up; ``output`` holds what it printed."""

    def __init__(self, message: str, output: str = ""):
        super().__init__(f"{message}\n{output}".rstrip())
        self.output = output


@dataclass
class PeerProcess:
    kind: str
    proc: subprocess.Popen
    port: int
    host: str = DEFAULT_HOST
    _lines: queue.Queue = field(default_factory=queue.Queue, repr=False)
    # every line the peer printed that was read so far (its log lines on stderr included)
    output: list[str] = field(default_factory=list, repr=False)

    def read_output(self) -> list[str]:
        """Collect what the peer printed since the last call, without waiting; all of it."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                return self.output
            if line is None:
                self._lines.put(None)  # keep the end marker for stop()
                return self.output
            self.output.append(line)

    def stop(self, timeout_s: float = 10.0) -> dict:
        """Stop gracefully; return the peer's final counters (empty if it died)."""
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
        except OSError:
            pass
        counters: dict = {}
        try:
            while True:
                line = self._lines.get(timeout=timeout_s)
                if line is None:
                    break
                self.output.append(line)
                msg = _parse(line)
                if msg.get("event") == "stopped":
                    counters = msg.get("counters", {})
                    break
        except queue.Empty:
            pass
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return counters

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> PeerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.stop(timeout_s=5.0)
        self.kill()


def _parse(line: str) -> dict:
    try:
        msg = json.loads(line)
    except ValueError:
        return {}
    return msg if isinstance(msg, dict) else {}


def _pump(stream, lines: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)


def find_newtonsoft() -> Path:
    for candidate in NEWTONSOFT_CANDIDATES:
        if Path(candidate).exists():
            return Path(candidate)
    raise FileNotFoundError(
        "Newtonsoft.Json.dll not found: apt-get install libnewtonsoft-json-cil-dev"
    )


def csharp_core_sources() -> list[Path]:
    """The core's .cs files: what the Unity assembly (MatePerf.Bridge.asmdef), the .NET SDK
    project (Headless~/MatePerf.Bridge) and the Mono build compile alike."""
    return sorted(CORE_DIR.glob("*.cs"))


def csharp_host_sources() -> list[Path]:
    return sorted(HOST_DIR.glob("*.cs"))


def build_csharp_peer(out_dir: Path | None = None) -> Path:
    """Compile the C# core and headless host with mcs; return the .exe (rebuilt when stale).

    Two assemblies, as in Unity (MatePerf.Bridge.asmdef) and the .NET SDK projects: the core as
    MatePerf.Bridge.dll, the host as MatePeer.exe over its public API. The default output,
    unity/Headless~/build/, is a folder Unity does not import (a Newtonsoft .dll there would
    clash with Unity's own package)."""
    mcs = shutil.which("mcs")
    if mcs is None or shutil.which("mono") is None:
        raise FileNotFoundError(
            "mono and mcs are required: apt-get install mono-mcs libnewtonsoft-json-cil-dev; "
            "or, with the .NET SDK, dotnet build -c Release unity/Headless~/MatePeer and set "
            "MATEPERF_CSHARP_PEER to "
            "unity/Headless~/build/bin/MatePeer/Release/net8.0/MatePeer.dll (unity/README.md)"
        )
    out_dir = Path(out_dir or HEADLESS_DIR / "build")
    out_dir.mkdir(parents=True, exist_ok=True)
    core, host = csharp_core_sources(), csharp_host_sources()
    exe, lib = out_dir / "MatePeer.exe", out_dir / "MatePerf.Bridge.dll"
    newest = max(s.stat().st_mtime for s in core + host)
    if exe.exists() and lib.exists() and min(exe.stat().st_mtime, lib.stat().st_mtime) >= newest:
        return exe
    newtonsoft = find_newtonsoft()
    # built beside, under the final names (an assembly's name is its file name), then moved in
    tmp = out_dir / f".build-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    base = [mcs, "-optimize+", "-nologo", f"-r:{newtonsoft}"]
    steps = (
        [*base, "-target:library", f"-out:{tmp / lib.name}", *map(str, core)],
        [*base, f"-r:{tmp / lib.name}", f"-out:{tmp / exe.name}", *map(str, host)],
    )
    try:
        for cmd in steps:
            result = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace")
            if result.returncode != 0:
                output = result.stdout + result.stderr
                raise PeerStartError("mcs failed to compile the C# peer", output)
        shutil.copy2(newtonsoft, out_dir / "Newtonsoft.Json.dll")
        os.replace(tmp / lib.name, lib)
        os.replace(tmp / exe.name, exe)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return exe


def csharp_peer_command(program: Path) -> list[str]:
    """How to start a built headless peer: a .NET SDK build's MatePeer.dll through ``dotnet``;
    a .exe directly on Windows; Mono's build through ``mono`` elsewhere."""
    if program.suffix.lower() == ".dll":
        return ["dotnet", str(program)]
    if os.name == "nt":
        return [str(program)]
    return ["mono", "--gc=sgen", str(program)]


_session_exe: dict[str, Path] = {}


def use_fresh_csharp_build(out_dir: Path) -> Path:
    """Compile into ``out_dir`` once per process and make start_peer("csharp") use that build."""
    if "exe" not in _session_exe:
        _session_exe["exe"] = build_csharp_peer(out_dir)
        os.environ["MATEPERF_CSHARP_PEER"] = str(_session_exe["exe"])
    return _session_exe["exe"]


def _spawn(
    cmd: list[str], kind: str, host: str, startup_timeout_s: float, env: dict | None = None
) -> PeerProcess:
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
        env=None if env is None else {**os.environ, **env},
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        while True:
            line = lines.get(timeout=startup_timeout_s)
            if line is None:
                raise PeerStartError(f"{kind} peer exited with {proc.wait()}", "".join(seen))
            seen.append(line)
            msg = _parse(line)
            if msg.get("event") == "listening":
                return PeerProcess(kind, proc, int(msg["port"]), host, lines, seen)
    except queue.Empty:
        proc.kill()
        proc.wait()
        raise PeerStartError(
            f"{kind} peer not listening after {startup_timeout_s} s", "".join(seen)
        ) from None


def start_peer(
    kind: str = "python",
    fps: float = 60.0,
    legacy: bool = False,
    host: str = DEFAULT_HOST,
    port: int = 0,
    max_line_bytes: int = MAX_LINE_BYTES,
    startup_timeout_s: float = 20.0,
    apply_delay_ms: float = 0.0,
    frame_busy: float = 0.0,
    *,
    max_ack_buffer_bytes: int | None = None,
    id_window: int | None = None,
    max_commands_per_frame: int = 0,
    max_tick_us: float = 0.0,
    missing_blendshapes: tuple[str, ...] = (),
    max_queued_requests: int | None = None,
    max_queued_bytes: int | None = None,
    spin_tail_us: float | None = None,
    frame_log: str | Path | None = None,
    env: dict | None = None,
) -> PeerProcess:
    """Start a peer in its own process and wait until it listens.

    ``apply_delay_ms``: the peer's main thread spends that long on every command it applies
    (a slow avatar, the known answer of the latency benchmarks).
    ``frame_busy``: share of each paced frame (fps > 0) the peer's main thread busy-spins after
    its tick, in [0, 1): Unity's own per-frame work.
    ``max_ack_buffer_bytes``: unsent response bytes a connection may hold before its client is
    dropped as not reading (None: the peer's default, 1 MiB). ``id_window``: request ids kept
    per connection for duplicate detection (None: 4096). ``max_commands_per_frame`` and
    ``max_tick_us``: the frame budget (0: no limit). ``missing_blendshapes``: names the avatar
    raises on in set_expression (a real fault for the isolation tests).
    ``max_queued_requests`` and ``max_queued_bytes``: the incoming bound per connection (None:
    the peer's defaults, 4096 requests and 4 MiB); beyond it a request gets "queue full".
    ``spin_tail_us``: paced frames yield this long before each deadline instead of sleeping
    (None: measured by the peer at start). ``frame_log``: a CSV file the peer writes every
    frame to (``frame,interval_us,tick_us``), read independently by tests. ``env``: variables
    added to the peer's environment (a locale, say).
    """
    if apply_delay_ms < 0:
        raise ValueError(f"apply_delay_ms must be >= 0, got {apply_delay_ms}")
    frame_busy = check_frame_busy(frame_busy)
    bounds = (
        ("max_ack_buffer_bytes", max_ack_buffer_bytes),
        ("id_window", id_window),
        ("max_queued_requests", max_queued_requests),
        ("max_queued_bytes", max_queued_bytes),
    )
    for name, value in bounds:
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if max_commands_per_frame < 0 or max_tick_us < 0:
        raise ValueError("max_commands_per_frame and max_tick_us must be >= 0 (0: no limit)")
    args = ["--host", host, "--port", str(port), "--fps", str(fps)]
    args += ["--max-line-bytes", str(max_line_bytes)] + (["--legacy"] if legacy else [])
    args += ["--stop-on-stdin-eof"]  # stop() closes its stdin
    if apply_delay_ms:
        args += ["--apply-delay-ms", repr(float(apply_delay_ms))]
    if frame_busy:
        args += ["--frame-busy", repr(frame_busy)]
    if max_ack_buffer_bytes is not None:
        args += ["--max-ack-buffer-bytes", str(int(max_ack_buffer_bytes))]
    if id_window is not None:
        args += ["--id-window", str(int(id_window))]
    if max_commands_per_frame:
        args += ["--max-commands-per-frame", str(int(max_commands_per_frame))]
    if max_tick_us:
        args += ["--max-tick-us", repr(float(max_tick_us))]
    for name in missing_blendshapes:
        args += ["--missing-blendshape", name]
    if max_queued_requests is not None:
        args += ["--max-queued-requests", str(int(max_queued_requests))]
    if max_queued_bytes is not None:
        args += ["--max-queued-bytes", str(int(max_queued_bytes))]
    if spin_tail_us is not None:
        if spin_tail_us < 0:
            raise ValueError(f"spin_tail_us must be >= 0, got {spin_tail_us}")
        args += ["--spin-tail-us", repr(float(spin_tail_us))]
    if frame_log is not None:
        args += ["--frame-log", str(frame_log)]
    if kind == "python":
        cmd = [sys.executable, "-m", "mateperf.bridge.peer_main", *args]
    elif kind == "csharp":
        # MATEPERF_CSHARP_PEER: an already built MatePeer.exe (the tests build their own)
        exe = os.environ.get("MATEPERF_CSHARP_PEER") or build_csharp_peer()
        cmd = [*csharp_peer_command(Path(exe)), *args]
    else:
        raise ValueError(f"peer must be one of {PEER_KINDS}, got {kind!r}")
    return _spawn(cmd, kind, host, startup_timeout_s, env)


def start_program(
    cmd: list[str],
    kind: str,
    host: str = DEFAULT_HOST,
    startup_timeout_s: float = 20.0,
    env: dict | None = None,
) -> PeerProcess:
    """Start any program that speaks the peer stdio contract (a harness around PythonBridge.cs,
    say) and wait until it listens."""
    return _spawn(cmd, kind, host, startup_timeout_s, env)


def start_floor(
    host: str = DEFAULT_HOST, reply_max_bytes: int = 256, startup_timeout_s: float = 20.0
) -> PeerProcess:
    """Start the raw ping-pong server (no JSON, no queue) in its own process."""
    cmd = [sys.executable, "-m", "mateperf.bridge.floor", "--host", host]
    cmd += ["--reply-max-bytes", str(reply_max_bytes)]
    cmd += ["--stop-on-stdin-eof"]  # stop() closes its stdin; so does this process's death
    return _spawn(cmd, "floor", host, startup_timeout_s)
