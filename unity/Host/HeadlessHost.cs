// Runs BridgeServer with a frame loop, as Unity's player loop would, for tests and benchmarks.
// Speaks the peer stdio contract: prints {"event":"listening","port":N}, stops when stdin
// closes, then prints {"event":"stopped","counters":{...}}.
// --apply-delay-ms N: the main thread spends N ms on every applied command (a slow avatar).
// --max-ack-buffer-bytes N, --id-window N, --max-commands-per-frame N, --max-tick-us N: the
// bounds and frame budget of BridgeServer; --missing-blendshape NAME: the avatar throws on it.
// --frame-busy SHARE: after each paced frame's Tick the main thread busy-spins SHARE (in [0, 1))
// of the frame period, a stand-in for Unity's own per-frame work on its main thread.
using System;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Threading;
using MatePerf.Bridge;
using Newtonsoft.Json.Linq;

public static class HeadlessHost
{
    static readonly string[] ValueOptions =
    {
        "--host", "--port", "--fps", "--max-line-bytes", "--apply-delay-ms", "--frame-busy",
        "--max-ack-buffer-bytes", "--id-window", "--max-commands-per-frame", "--max-tick-us",
        "--missing-blendshape",
    };

    public static int Main(string[] args)
    {
        string host = "127.0.0.1";
        int port = 0, maxLine = BridgeProtocol.DefaultMaxLineBytes;
        double fps = 60, applyDelayMs = 0, frameBusy = 0, maxTickUs = 0;
        long maxAckBufferBytes = BridgeServer.DefaultMaxAckBufferBytes;
        int idWindow = BridgeServer.DefaultIdWindow, maxCommandsPerFrame = 0;
        var missingBlendshapes = new System.Collections.Generic.List<string>();
        bool legacy = false;
        for (int i = 0; i < args.Length; i++)
        {
            string name = args[i];
            if (name == "--legacy") { legacy = true; continue; }
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
            Log = message => Console.Error.WriteLine("mateperf-csharp peer: " + message),
        };
        try { server.Start(); }
        catch (SocketException e)
        {
            Console.Error.WriteLine("mateperf-csharp peer: cannot listen on " + host + ":" + port.ToString(CultureInfo.InvariantCulture)
                                    + ": " + e.Message + " (is another bridge running?)");
            return 1;
        }
        var stop = new ManualResetEventSlim(false);
        new Thread(() =>
        {
            try { Console.OpenStandardInput().CopyTo(System.IO.Stream.Null); } catch (Exception) { }
            stop.Set();
            server.WorkArrived.Set();
        }) { IsBackground = true }.Start();
        Console.Out.WriteLine(new JObject { ["event"] = "listening", ["peer"] = "csharp", ["port"] = server.Port }.ToString(Newtonsoft.Json.Formatting.None));
        Console.Out.Flush();

        if (fps <= 0)
        {
            while (!stop.IsSet)
            {
                if (server.WorkArrived.WaitOne(50)) server.Tick();
            }
        }
        else
        {
            long periodTicks = (long)(Stopwatch.Frequency / fps);
            long busyTicks = (long)(periodTicks * frameBusy);
            long next = Stopwatch.GetTimestamp();
            while (!stop.IsSet)
            {
                long now = Stopwatch.GetTimestamp();
                long waitMs = (next - now) * 1000 / Stopwatch.Frequency;
                if (waitMs > 1) Thread.Sleep((int)(waitMs - 1));
                // the last millisecond by yielding: Thread.Sleep only has millisecond resolution
                while (Stopwatch.GetTimestamp() < next) Thread.Yield();
                next += periodTicks;
                if (next < now) next = now + periodTicks;  // fell behind: skip, do not burst
                server.Tick();
                if (busyTicks > 0) BusySpin(busyTicks);
            }
        }
        server.Dispose();
        Console.Out.WriteLine(new JObject { ["event"] = "stopped", ["counters"] = server.Counters.ToJson(), ["frames"] = server.Frame }.ToString(Newtonsoft.Json.Formatting.None));
        Console.Out.Flush();
        return 0;
    }

    /// Real CPU work on the main thread for `ticks` Stopwatch ticks: no sleep, no yield.
    static void BusySpin(long ticks)
    {
        long end = Stopwatch.GetTimestamp() + ticks;
        while (Stopwatch.GetTimestamp() < end) { }
    }
}
