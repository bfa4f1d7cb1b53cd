// In-memory avatar: records what Unity would change, without rendering anything.
using System.Collections.Generic;
using System.Linq;
using Newtonsoft.Json.Linq;

namespace MatePerf.Bridge
{
    public sealed class AvatarState : IAvatar, IAvatarCheckpoint
    {
        /// Blendshapes this model lacks: SetExpression of one throws, as a real VRM rig would.
        public readonly HashSet<string> MissingBlendshapes = new HashSet<string>();

        public string Model;
        public readonly Dictionary<string, double> Expressions = new Dictionary<string, double>();
        public double TransitionSpeed = 1.0;
        public bool AutoBlink = true;
        public bool HeadMovementEnabled;
        public double HeadMinInterval = 2.0, HeadMaxInterval = 5.0, HeadMaxAngle = 10.0;
        public int EchoBytes;
        public long CommandsApplied;

        public void LoadModel(string path) { Model = string.IsNullOrEmpty(path) ? "default" : path; CommandsApplied++; }
        public void UnloadModel() { Model = null; Expressions.Clear(); CommandsApplied++; }
        public void SetExpression(string name, double value)
        {
            if (MissingBlendshapes.Contains(name))
                throw new KeyNotFoundException("no blendshape '" + name + "' on this model");
            Expressions[name] = value;
            CommandsApplied++;
        }
        public void ResetExpressions() { Expressions.Clear(); CommandsApplied++; }
        public void SetTransitionSpeed(double speed) { TransitionSpeed = speed; CommandsApplied++; }
        public void SetAutoBlink(bool enabled) { AutoBlink = enabled; CommandsApplied++; }

        public void SetAutoHeadMovement(bool enabled, double? minInterval, double? maxInterval, double? maxAngle)
        {
            HeadMovementEnabled = enabled;
            HeadMinInterval = minInterval ?? HeadMinInterval;
            HeadMaxInterval = maxInterval ?? HeadMaxInterval;
            HeadMaxAngle = maxAngle ?? HeadMaxAngle;
            CommandsApplied++;
        }

        public void Echo(int payloadBytes) { EchoBytes = payloadBytes; CommandsApplied++; }

        sealed class Saved
        {
            public string Model; public Dictionary<string, double> Expressions; public double TransitionSpeed;
            public bool AutoBlink, HeadMovementEnabled; public double HeadMinInterval, HeadMaxInterval, HeadMaxAngle;
            public int EchoBytes; public long CommandsApplied;
        }

        public object Checkpoint()
        {
            return new Saved
            {
                Model = Model, Expressions = new Dictionary<string, double>(Expressions), TransitionSpeed = TransitionSpeed,
                AutoBlink = AutoBlink, HeadMovementEnabled = HeadMovementEnabled, HeadMinInterval = HeadMinInterval,
                HeadMaxInterval = HeadMaxInterval, HeadMaxAngle = HeadMaxAngle, EchoBytes = EchoBytes,
                CommandsApplied = CommandsApplied,
            };
        }

        public void Restore(object checkpoint)
        {
            var s = (Saved)checkpoint;
            Model = s.Model;
            Expressions.Clear();
            foreach (var kv in s.Expressions) Expressions[kv.Key] = kv.Value;
            TransitionSpeed = s.TransitionSpeed; AutoBlink = s.AutoBlink; HeadMovementEnabled = s.HeadMovementEnabled;
            HeadMinInterval = s.HeadMinInterval; HeadMaxInterval = s.HeadMaxInterval; HeadMaxAngle = s.HeadMaxAngle;
            EchoBytes = s.EchoBytes; CommandsApplied = s.CommandsApplied;
        }

        public JObject Snapshot()
        {
            var expressions = new JObject();
            foreach (var kv in Expressions.OrderBy(kv => kv.Key, System.StringComparer.Ordinal))
                expressions[kv.Key] = kv.Value;
            return new JObject
            {
                ["model"] = Model,
                ["expressions"] = expressions,
                ["transition_speed"] = TransitionSpeed,
                ["auto_blink"] = AutoBlink,
                ["head_movement_enabled"] = HeadMovementEnabled,
                ["echo_bytes"] = EchoBytes,
                ["commands_applied"] = CommandsApplied,
            };
        }
    }
}
