// Runs unity/Runtime/PythonBridge/PythonBridge.cs as Unity would, against the UnityEngine stub:
// sets its serialized fields, calls Awake and Start, then Update once per frame (60 fps) until
// stdin closes, then OnDestroy.
// Prints {"event":"awake","enabled":bool}, {"event":"listening","port":N} when it serves, and
// {"event":"stopped","counters":{...}} at the end. Usage: mono PythonBridgeHarness.exe PORT [FIELD=VALUE ...]
// avatar=desktop-mate puts the Desktop-Mate sample's DesktopMateAvatar in avatarComponent, over
// (stubbed) instances of the companion's four scripts; avatar=desktop-mate-bare, over none.
using System;
using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Threading;
using MatePerf.Bridge;
using MatePerf.Unity;
using Newtonsoft.Json.Linq;
using UnityEngine;

public static class PythonBridgeHarness
{
    const BindingFlags Private = BindingFlags.Instance | BindingFlags.NonPublic;

    static void Print(JObject line)
    {
        Console.Out.WriteLine(line.ToString(Newtonsoft.Json.Formatting.None));
        Console.Out.Flush();
    }

    static void Call(PythonBridge bridge, string method)
    {
        typeof(PythonBridge).GetMethod(method, Private).Invoke(bridge, null);
    }

    static MonoBehaviour DesktopMate(bool withScripts)
    {
        var avatar = new MatePerf.Unity.Samples.DesktopMateAvatar();
        if (withScripts)
        {
            var type = typeof(MatePerf.Unity.Samples.DesktopMateAvatar);
            type.GetField("blendshapeController", Private).SetValue(avatar, new VRMBlendshapeController());
            type.GetField("autoBlinkController", Private).SetValue(avatar, new VRMAutoBlinkController());
            type.GetField("headMovementController", Private).SetValue(avatar, new VRMHeadMovementController());
            type.GetField("vrmLoader", Private).SetValue(avatar, new VRMLoader());
        }
        return avatar;
    }

    public static int Main(string[] args)
    {
        var bridge = new PythonBridge();
        typeof(PythonBridge).GetField("port", Private).SetValue(bridge, int.Parse(args[0], CultureInfo.InvariantCulture));
        for (int i = 1; i < args.Length; i++)
        {
            var kv = args[i].Split(new[] { '=' }, 2);
            if (kv[0] == "avatar")
            {
                typeof(PythonBridge).GetField("avatarComponent", Private).SetValue(bridge, DesktopMate(kv[1] == "desktop-mate"));
                continue;
            }
            var field = typeof(PythonBridge).GetField(kv[0], Private);
            field.SetValue(bridge, Convert.ChangeType(kv[1], field.FieldType, CultureInfo.InvariantCulture));
        }
        Call(bridge, "Awake");
        Print(new JObject { ["event"] = "awake", ["enabled"] = bridge.enabled });
        if (bridge.enabled) Call(bridge, "Start");  // Unity calls Start only on an enabled behaviour
        var server = (BridgeServer)typeof(PythonBridge).GetField("server", Private).GetValue(bridge);
        if (server != null) Print(new JObject { ["event"] = "listening", ["peer"] = "unity", ["port"] = server.Port });

        var stop = new ManualResetEventSlim(false);
        new Thread(() =>
        {
            try { Console.OpenStandardInput().CopyTo(System.IO.Stream.Null); } catch (Exception) { }
            stop.Set();
        }) { IsBackground = true }.Start();
        long period = Stopwatch.Frequency / 60, next = Stopwatch.GetTimestamp();
        while (!stop.IsSet)
        {
            // Unity keeps calling Update only on an enabled behaviour
            if (bridge.enabled) Call(bridge, "Update");
            next += period;
            long waitMs = (next - Stopwatch.GetTimestamp()) * 1000 / Stopwatch.Frequency;
            if (waitMs > 0) stop.Wait((int)waitMs);
        }
        Call(bridge, "OnDestroy");
        Print(new JObject
        {
            ["event"] = "stopped",
            ["enabled"] = bridge.enabled,
            ["counters"] = server != null ? server.Counters.ToJson() : new JObject(),
            ["frames"] = server != null ? server.Frame : 0,
        });
        return 0;
    }
}
