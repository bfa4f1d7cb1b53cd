// Runs BridgeServer with a frame loop, as Unity's player loop would, for tests and benchmarks.
// Speaks the peer stdio contract: prints {"event":"listening","port":N}, runs until Ctrl+C,
// SIGTERM (Ctrl+Break on Windows), or with --stop-on-stdin-eof until its stdin closes (how
// mateperf's spawner stops it), then prints {"event":"stopped","counters":{...}}. Started by hand
// in the background its stdin is /dev/null or closed, so stdin's end alone stops it only when asked.
// --apply-delay-ms N: the main thread spends N ms on every applied command (a slow avatar).
// --max-ack-buffer-bytes N, --id-window N, --max-commands-per-frame N, --max-tick-us N: the
// bounds and frame budget of BridgeServer; --missing-blendshape NAME: the avatar throws on it.
// --frame-busy SHARE: after each paced frame's Tick the main thread busy-spins SHARE (in [0, 1))
// of the frame period, a stand-in for Unity's own per-frame work on its main thread.
// --max-queued-requests N, --max-queued-bytes N: the incoming bound per connection.
// --spin-tail-us US: paced frames yield through the last US µs before each frame instead of
// sleeping (default: measured at start from how late Thread.Sleep(1) ends, see FramePacer).
// On Windows the host asks for a 1 ms timer while it runs (WindowsTimer: timeBeginPeriod), and
// says so in one line where it is refused; stats reports timer_resolution and main_slept_s.
// --frame-log PATH: append every completed frame to PATH as CSV `frame,interval_us,tick_us`
// (FrameLogFile: written off the main thread), the frames frame_stats reports, numbered alike.
// The identity query answers peer "mateperf-headless", the pacing target as target_fps, and no
// Unity, renderer or vSync (null), runInBackground true (nothing here stops the frames).
// Built by mateperf/bridge/process.py with Mono's mcs, or with the .NET SDK:
// dotnet run --project "unity/Headless~/MatePeer" -- --port 5555 --fps 60
using System;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Threading;
using MatePerf.Bridge;
using Newtonsoft.Json.Linq;

public static class HeadlessHost
{
    static readonly string[] ValueOptions =
    {
        "--host", "--port", "--fps", "--max-line-bytes", "--apply-delay-ms", "--frame-busy",
        "--max-ack-buffer-bytes", "--id-window", "--max-commands-per-frame", "--max-tick-us",
        "--missing-blendshape", "--max-queued-requests", "--max-queued-bytes", "--spin-tail-us",
        "--frame-log",
    };

    public static int Main(string[] args)
    {
        string host = "127.0.0.1";
        int port = 0, maxLine = BridgeProtocol.DefaultMaxLineBytes;
        double fps = 60, applyDelayMs = 0, frameBusy = 0, maxTickUs = 0;
        long maxAckBufferBytes = BridgeServer.DefaultMaxAckBufferBytes;
        int idWindow = BridgeServer.DefaultIdWindow, maxCommandsPerFrame = 0;
        int maxQueuedRequests = BridgeServer.DefaultMaxQueuedRequests;
        long maxQueuedBytes = BridgeServer.DefaultMaxQueuedBytes;
        double spinTailUs = -1;  // measured
        var missingBlendshapes = new System.Collections.Generic.List<string>();
        bool legacy = false, stopOnStdinEof = false;
        string frameLogPath = null;
        for (int i = 0; i < args.Length; i++)
        {
            string name = args[i];
            if (name == "--legacy") { legacy = true; continue; }
            if (name == "--stop-on-stdin-eof") { stopOnStdinEof = true; continue; }
            if (Array.IndexOf(ValueOptions, name) < 0) { Console.Error.WriteLine("unknown argument " + name); return 2; }
            if (i + 1 >= args.Length) { Console.Error.WriteLine("missing value for " + name); return 2; }
            string value = args[++i];
            bool ok = true;
            switch (name)
            {
                case "--host": host = value; break;
                case "--port": ok = int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out port); break;
                case "--fps": ok = double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out fps); break;
                case "--max-line-bytes": ok = int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out maxLine); break;
                case "--apply-delay-ms": ok = double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out applyDelayMs); break;
                case "--frame-busy":
                    ok = double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out frameBusy) && frameBusy >= 0 && frameBusy < 1;
                    if (!ok) { Console.Error.WriteLine("--frame-busy must be a number in [0, 1), got '" + value + "'"); return 2; }
                    break;
                case "--max-ack-buffer-bytes":
                    ok = long.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out maxAckBufferBytes) && maxAckBufferBytes >= 1;
                    break;
                case "--id-window": ok = int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out idWindow) && idWindow >= 1; break;
                case "--max-commands-per-frame":
                    ok = int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out maxCommandsPerFrame) && maxCommandsPerFrame >= 0;
                    break;
                case "--max-tick-us": ok = double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out maxTickUs) && maxTickUs >= 0; break;
                case "--missing-blendshape": missingBlendshapes.Add(value); break;
                case "--max-queued-requests":
                    ok = int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out maxQueuedRequests) && maxQueuedRequests >= 1;
                    break;
                case "--max-queued-bytes":
                    ok = long.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out maxQueuedBytes) && maxQueuedBytes >= 1;
                    break;
                case "--frame-log": frameLogPath = value; ok = value.Length > 0; break;
                case "--spin-tail-us": ok = double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out spinTailUs) && spinTailUs >= 0; break;
                default: Console.Error.WriteLine("unknown argument " + name); return 2;
            }
            if (!ok) { Console.Error.WriteLine(name + ": not a valid value: '" + value + "'"); return 2; }
        }
        if (!(applyDelayMs >= 0))
        {
            Console.Error.WriteLine("--apply-delay-ms must be >= 0, got " + applyDelayMs.ToString(CultureInfo.InvariantCulture));
            return 2;
        }
        var avatar = new AvatarState();
        foreach (var name in missingBlendshapes) avatar.MissingBlendshapes.Add(name);
        IPAddress bindAddress;
        if (!IPAddress.TryParse(host, out bindAddress)) { Console.Error.WriteLine("--host: not an IP address: '" + host + "'"); return 2; }
        var server = new BridgeServer(avatar, host, port, legacy, maxLine, applyDelayMs)
        {
            Fps = fps > 0 ? fps : 0,
            FrameBusy = fps > 0 ? frameBusy : 0,
            MaxAckBufferBytes = maxAckBufferBytes,
            IdWindow = idWindow,
            MaxCommandsPerFrame = maxCommandsPerFrame,
            MaxTickMicros = maxTickUs,
            MaxQueuedRequests = maxQueuedRequests,
            MaxQueuedBytes = maxQueuedBytes,
            Log = message => Console.Error.WriteLine("mateperf-csharp peer: " + message),
            Identity = new PeerIdentity
            {
                Peer = "mateperf-headless",
                TargetFps = fps > 0 ? fps : (double?)null,
                RunInBackground = true,
                FrameTiming = PeerIdentity.HeadlessFrameTiming,
            },
        };
        FrameLogFile frameLog = null;
        if (frameLogPath != null)
        {
            try { frameLog = new FrameLogFile(frameLogPath, server.Log); }
            catch (Exception e) when (e is IOException || e is UnauthorizedAccessException || e is ArgumentException
                                      || e is NotSupportedException || e is System.Security.SecurityException)
            {
                Console.Error.WriteLine("--frame-log: cannot write '" + frameLogPath + "': " + e.Message);
                return 2;
            }
        }
        try { server.Start(); }
        catch (SocketException e)
        {
            if (frameLog != null) frameLog.Dispose();
            Console.Error.WriteLine("mateperf-csharp peer: cannot listen on " + host + ":" + port.ToString(CultureInfo.InvariantCulture)
                                    + ": " + e.Message + " (is another bridge running?)");
            return 1;
        }
        var stop = new ManualResetEventSlim(false);
        var stopped = new ManualResetEventSlim(false);
        Action requestStop = () => { stop.Set(); server.WorkArrived.Set(); };
        if (stopOnStdinEof)
        {
            new Thread(() =>
            {
                try { Console.OpenStandardInput().CopyTo(System.IO.Stream.Null); } catch (Exception) { }
                requestStop();
            }) { IsBackground = true }.Start();
        }
        StopSignals.Watch(requestStop, stopped);
        Console.Out.WriteLine(new JObject { ["event"] = "listening", ["peer"] = "csharp", ["port"] = server.Port }.ToString(Newtonsoft.Json.Formatting.None));
        Console.Out.Flush();

        // Paced frames and the apply delay sleep: ask Windows for a 1 ms timer while we run.
        bool timerAsked = (fps > 0 || applyDelayMs > 0) && WindowsTimer.Begin(server);
        if (fps <= 0)
        {
            while (!stop.IsSet)
            {
                if (server.WorkArrived.WaitOne(50)) { server.Tick(); LogFrame(server, frameLog); }
            }
        }
        else
        {
            var pacer = FramePacer.Measure(spinTailUs >= 0 ? spinTailUs : (double?)null);
            server.TimerOvershootMicros = pacer.OvershootMedianMicros;
            server.SpinTailMicros = pacer.SpinTailMicros;
            if (server.TimerResolution != null && server.TimerResolution.StartsWith("unavailable", StringComparison.Ordinal))
                server.Log("timer resolution " + server.TimerResolution + "; paced frames fall back to yielding through the last "
                           + (pacer.SpinTailMicros / 1000).ToString("0.0", CultureInfo.InvariantCulture)
                           + " ms of each frame, which keeps the main thread busy for most of every frame");
            long periodTicks = (long)(Stopwatch.Frequency / fps);
            long busyTicks = (long)(periodTicks * frameBusy);
            long next = Stopwatch.GetTimestamp();
            while (!stop.IsSet)
            {
                long now = Stopwatch.GetTimestamp();
                pacer.WaitUntil(next);
                server.MainSleptSeconds = pacer.SleptSeconds;
                next += periodTicks;
                if (next < now) next = now + periodTicks;  // fell behind: skip, do not burst
                server.Tick();
                LogFrame(server, frameLog);
                if (busyTicks > 0) BusySpin(busyTicks);
            }
        }
        if (timerAsked) WindowsTimer.End();
        server.Dispose();
        if (frameLog != null) frameLog.Dispose();
        Console.Out.WriteLine(new JObject { ["event"] = "stopped", ["counters"] = server.Counters.ToJson(), ["frames"] = server.Frame }.ToString(Newtonsoft.Json.Formatting.None));
        Console.Out.Flush();
        stopped.Set();
        return 0;
    }

    /// After a Tick: the frame it recorded (the one that ended when it started) into the file.
    static void LogFrame(BridgeServer server, FrameLogFile frameLog)
    {
        int intervalUs, tickUs;
        if (frameLog == null || server.Frames.Recorded == loggedFrame) return;
        if (server.Frames.Newest(out intervalUs, out tickUs))
        {
            loggedFrame = server.Frames.Recorded;
            frameLog.Add(loggedFrame, intervalUs, tickUs);
        }
    }

    static long loggedFrame;  // main thread: the newest frame handed to the frame log

    /// Real CPU work on the main thread for `ticks` Stopwatch ticks: no sleep, no yield.
    static void BusySpin(long ticks)
    {
        long end = Stopwatch.GetTimestamp() + ticks;
        while (Stopwatch.GetTimestamp() < end) { }
    }
}

/// Waits until a Stopwatch deadline: Thread.Sleep to a tail before it, then Thread.Yield. Sleep
/// ends on the OS timer's next tick at the earliest: tens of µs late on Linux, up to the 15.6 ms
/// system tick on Windows unless something raised the timer resolution. The tail is measured
/// once (1.25x the 90th percentile of how late 15 sleeps of 1 ms end; at most 1 ms where the
/// median is under 1 ms), as the Python peer's FramePacer (mateperf/bridge/pacing.py) does.
sealed class FramePacer
{
    const int Probes = 15;
    const double TailMargin = 1.25, FineTimerMicros = 1000, MaxTailMicros = 50000;
    readonly long tailTicks;
    public readonly double? OvershootMedianMicros;
    public readonly double SpinTailMicros;

    public FramePacer(double spinTailMicros, double? overshootMedianMicros = null)
    {
        SpinTailMicros = spinTailMicros;
        OvershootMedianMicros = overshootMedianMicros;
        tailTicks = (long)(spinTailMicros * Stopwatch.Frequency / 1e6);
    }

    /// Measure how late Thread.Sleep(1) ends here; the tail is chosen from it unless given.
    public static FramePacer Measure(double? spinTailMicros)
    {
        var overshoots = new double[Probes];
        for (int i = 0; i < Probes; i++)
        {
            long start = Stopwatch.GetTimestamp();
            Thread.Sleep(1);
            double us = (Stopwatch.GetTimestamp() - start) * 1e6 / Stopwatch.Frequency - 1000;
            overshoots[i] = Math.Max(0, us);
        }
        Array.Sort(overshoots);
        double median = NearestRank(overshoots, 0.5), p90 = NearestRank(overshoots, 0.9);
        double tail = Math.Min(median < FineTimerMicros ? FineTimerMicros : MaxTailMicros, TailMargin * p90);
        return new FramePacer(spinTailMicros ?? tail, median);
    }

    static double NearestRank(double[] sorted, double quantile)
    {
        return sorted[Math.Max(0, (int)Math.Ceiling(quantile * sorted.Length) - 1)];
    }

    long sleptTicks;  // main thread: its time inside Thread.Sleep so far

    public double SleptSeconds { get { return (double)sleptTicks / Stopwatch.Frequency; } }

    public void WaitUntil(long deadline)
    {
        long start = Stopwatch.GetTimestamp();
        long left = deadline - start - tailTicks;
        long sleepMs = left * 1000 / Stopwatch.Frequency;  // whole ms: Thread.Sleep's unit
        if (sleepMs > 0)
        {
            Thread.Sleep((int)sleepMs);
            sleptTicks += Stopwatch.GetTimestamp() - start;
        }
        while (Stopwatch.GetTimestamp() < deadline) Thread.Yield();
    }
}

/// Windows' timer resolution for the life of the peer: timeBeginPeriod(1) from winmm, as
/// browsers and media players ask for it, so that Thread.Sleep ends within about
/// a millisecond instead of on the 15.6 ms system tick; timeEndPeriod(1) at exit. Elsewhere
/// sleeps already end within µs and nothing is asked. The status goes to the stats reply.
static class WindowsTimer
{
    const uint PeriodMs = 1, TimerrNoError = 0;

    [DllImport("winmm.dll")] static extern uint timeBeginPeriod(uint uPeriod);
    [DllImport("winmm.dll")] static extern uint timeEndPeriod(uint uPeriod);

    /// True when the period was set (End must then be called).
    public static bool Begin(BridgeServer server)
    {
        if (Environment.OSVersion.Platform != PlatformID.Win32NT)
        {
            server.TimerResolution = "not needed on this OS (sleeps end within µs)";
            return false;
        }
        try
        {
            uint answer = timeBeginPeriod(PeriodMs);
            server.TimerResolution = answer == TimerrNoError
                ? "1 ms (timeBeginPeriod)"
                : "unavailable: timeBeginPeriod(1) answered " + answer.ToString(CultureInfo.InvariantCulture);
            return answer == TimerrNoError;
        }
        catch (Exception e) when (e is DllNotFoundException || e is EntryPointNotFoundException)
        {
            server.TimerResolution = "unavailable: winmm cannot be loaded (" + e.Message + ")";
            return false;
        }
    }

    public static void End() { timeEndPeriod(PeriodMs); }
}

/// Ctrl+C, Ctrl+Break and SIGTERM end the frame loop through `requestStop` (which only sets
/// events: the main thread sees them at its next frame and exits the loop itself). Ctrl+C and
/// Ctrl+Break arrive as Console.CancelKeyPress (cancelled, so the process lives on to print its
/// stopped line). SIGTERM: the .NET runtime raises ProcessExit and exits when the handler
/// returns, so the handler waits (bounded) for the loop to finish; Mono has no such hook and
/// dies at once, so under Mono a thread waits on Mono.Posix's UnixSignal, loaded by name
/// because the .NET SDK build cannot reference Mono.Posix.
static class StopSignals
{
    const int ExitWaitMs = 5000;
    const string MonoPosix = ", Mono.Posix, Version=4.0.0.0, Culture=neutral, PublicKeyToken=0738eb9f132ed756";
    const int Sigint = 2, Sigterm = 15;

    public static void Watch(Action requestStop, ManualResetEventSlim stopped)
    {
        Console.CancelKeyPress += (sender, e) =>
        {
            e.Cancel = true;
            requestStop();
            // where a runtime does not honour cancelling Ctrl+Break it ends the process when this
            // returns: wait (bounded, on the handler's thread) for the stopped line first
            if (e.SpecialKey == ConsoleSpecialKey.ControlBreak) stopped.Wait(ExitWaitMs);
        };
        AppDomain.CurrentDomain.ProcessExit += (sender, e) =>
        {
            if (stopped.IsSet) return;
            requestStop();
            stopped.Wait(ExitWaitMs);
        };
        if (Type.GetType("Mono.Runtime") == null) return;
        Type signal = Type.GetType("Mono.Unix.UnixSignal" + MonoPosix);
        Type signum = Type.GetType("Mono.Unix.Native.Signum" + MonoPosix);
        if (signal == null || signum == null)
        {
            Console.Error.WriteLine("mateperf-csharp peer: Mono.Posix is not installed (apt-get install libmono-posix4.0-cil): "
                                    + "SIGTERM ends this peer without its stopped line; stop it with Ctrl+C");
            return;
        }
        // one thread per signal: WaitHandle.WaitAny over UnixSignals crashes Mono (they are no OS handles)
        foreach (int number in new[] { Sigterm, Sigint })
        {
            var handle = (WaitHandle)Activator.CreateInstance(signal, Enum.ToObject(signum, number));
            new Thread(() => { handle.WaitOne(); requestStop(); }) { IsBackground = true }.Start();
        }
    }
}
