// Runs BridgeServer with a frame loop, as Unity's player loop would, for tests and benchmarks.
// Speaks the peer stdio contract: prints {"event":"listening","port":N}, stops when stdin
// closes, then prints {"event":"stopped","counters":{...}}.
// --apply-delay-ms N: the main thread spends N ms on every applied command (a slow avatar).
using System;
using System.Diagnostics;
using System.Globalization;
using System.Threading;
using MatePerf.Bridge;
using Newtonsoft.Json.Linq;

public static class HeadlessHost
{
    public static int Main(string[] args)
    {
        string host = "127.0.0.1";
        int port = 0, maxLine = BridgeProtocol.DefaultMaxLineBytes;
        double fps = 60, applyDelayMs = 0;
        bool legacy = false;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--host": host = args[++i]; break;
                case "--port": port = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--fps": fps = double.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--legacy": legacy = true; break;
                case "--max-line-bytes": maxLine = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--apply-delay-ms": applyDelayMs = double.Parse(args[++i], CultureInfo.InvariantCulture); break;
                default: Console.Error.WriteLine("unknown argument " + args[i]); return 2;
            }
        }
        if (!(applyDelayMs >= 0))
        {
            Console.Error.WriteLine("--apply-delay-ms must be >= 0, got " + applyDelayMs.ToString(CultureInfo.InvariantCulture));
            return 2;
        }
        var server = new BridgeServer(new AvatarState(), host, port, legacy, maxLine, applyDelayMs);
        server.Start();
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
            }
        }
        server.Dispose();
        Console.Out.WriteLine(new JObject { ["event"] = "stopped", ["counters"] = server.Counters.ToJson(), ["frames"] = server.Frame }.ToString(Newtonsoft.Json.Formatting.None));
        Console.Out.Flush();
        return 0;
    }
}
