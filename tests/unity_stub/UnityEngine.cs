// A minimal stub of the UnityEngine types unity/Runtime/PythonBridge/PythonBridge.cs uses, so the
// tests compile and run it under Mono: a rename in the core then breaks the build here, not in the user's editor. Lives
// under tests/, never under unity/, where it would clash with the real UnityEngine in a project.
// Debug writes one JSON line per message on stdout, for the tests to read.
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
