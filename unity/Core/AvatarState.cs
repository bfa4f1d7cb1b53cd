// In-memory avatar: records what Unity would change, without rendering anything.
using System.Collections.Generic;
using System.Linq;
using Newtonsoft.Json.Linq;

namespace MatePerf.Bridge
{
    public sealed class AvatarState : IAvatar
    {
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
        public void SetExpression(string name, double value) { Expressions[name] = value; CommandsApplied++; }
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
