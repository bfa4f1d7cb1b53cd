// A minimal stub of the UnityEngine types unity/Runtime/PythonBridge/PythonBridge.cs uses, so the
// tests compile and run it under Mono: a rename in the core then breaks the build here, not in the user's editor. Lives
// under tests/, never under unity/, where it would clash with the real UnityEngine in a project.
// Debug writes one JSON line per message on stdout, for the tests to read. Application,
// SystemInfo and QualitySettings answer the companion's project settings (Unity 2022.3.62f2,
// runInBackground off, the "High Fidelity" quality level's vSync 1, no frame-rate target);
// FrameTimingManager hands out fixed figures (CPU main thread 2.5 ms; GPU 4.0 ms on odd frames
// and 0, no GPU timer, on even ones) so a test can follow them into frame_stats, and is off
// where the environment sets UNITY_STUB_FRAME_TIMING_STATS=0 (Player setting off).
using System;
using Newtonsoft.Json.Linq;

namespace UnityEngine
{
    public class Object { }

    public class Component : Object { }

    public class Behaviour : Component
    {
        public bool enabled { get; set; } = true;
    }

    public class MonoBehaviour : Behaviour { }

    public class PropertyAttribute : Attribute { }

    [AttributeUsage(AttributeTargets.Field)]
    public sealed class SerializeField : Attribute { }

    [AttributeUsage(AttributeTargets.Class)]
    public sealed class AddComponentMenu : Attribute
    {
        public AddComponentMenu(string menuName) { }
    }

    public static class Application
    {
        public static string unityVersion { get { return "2022.3.62f2"; } }
        public static int targetFrameRate { get; set; } = -1;
        public static bool runInBackground { get; set; } = false;
    }

    public static class SystemInfo
    {
        public static string graphicsDeviceName { get { return "stub graphics device"; } }
        public static Rendering.GraphicsDeviceType graphicsDeviceType { get { return Rendering.GraphicsDeviceType.Direct3D11; } }
    }

    public static class QualitySettings
    {
        public static int vSyncCount { get; set; } = 1;
    }

    public struct FrameTiming
    {
        public ulong frameStartTimestamp;
        public double cpuFrameTime, cpuMainThreadFrameTime, gpuFrameTime;
    }

    public static class FrameTimingManager
    {
        static ulong captured;

        public static bool IsFeatureEnabled()
        {
            return Environment.GetEnvironmentVariable("UNITY_STUB_FRAME_TIMING_STATS") != "0";
        }

        public static void CaptureFrameTimings() { captured++; }

        public static uint GetLatestTimings(uint numFrames, FrameTiming[] timings)
        {
            if (numFrames == 0 || captured < 2) return 0;  // Unity's timings lag the frames
            ulong frame = captured - 1;
            timings[0] = new FrameTiming
            {
                frameStartTimestamp = frame,
                cpuFrameTime = 16.0,
                cpuMainThreadFrameTime = 2.5,
                gpuFrameTime = frame % 2 == 1 ? 4.0 : 0.0,
            };
            return 1;
        }
    }

    [AttributeUsage(AttributeTargets.Field, AllowMultiple = true)]
    public sealed class TooltipAttribute : PropertyAttribute
    {
        public readonly string tooltip;
        public TooltipAttribute(string tooltip) { this.tooltip = tooltip; }
    }

    // what the package sample's BlendShapeAvatar uses (Unity's own names and signatures)
    public sealed class Mesh : Object
    {
        public readonly System.Collections.Generic.List<string> blendShapeNames = new System.Collections.Generic.List<string>();
        public int blendShapeCount { get { return blendShapeNames.Count; } }
        public int GetBlendShapeIndex(string blendShapeName) { return blendShapeNames.IndexOf(blendShapeName); }
    }

    public class Renderer : Component { }

    public class SkinnedMeshRenderer : Renderer
    {
        public Mesh sharedMesh { get; set; }
        public readonly System.Collections.Generic.Dictionary<int, float> weights = new System.Collections.Generic.Dictionary<int, float>();
        public void SetBlendShapeWeight(int index, float value) { weights[index] = value; }
        public float GetBlendShapeWeight(int index) { float w; return weights.TryGetValue(index, out w) ? w : 0f; }
    }

    public static class Debug
    {
        static void Write(string level, object message)
        {
            var line = new JObject { ["event"] = "log", ["level"] = level, ["message"] = message == null ? "Null" : message.ToString() };
            Console.Out.WriteLine(line.ToString(Newtonsoft.Json.Formatting.None));
            Console.Out.Flush();
        }

        public static void Log(object message) { Write("info", message); }
        public static void LogWarning(object message) { Write("warning", message); }
        public static void LogError(object message) { Write("error", message); }
    }
}

namespace UnityEngine.Rendering
{
    public enum GraphicsDeviceType { OpenGL2 = 0, Direct3D9 = 1, Direct3D11 = 2, Null = 4, OpenGLCore = 17, Direct3D12 = 18, Vulkan = 21 }
}
