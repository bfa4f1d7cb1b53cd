// An IAvatar over a SkinnedMeshRenderer's blendshapes: what PythonBridge drives on the main
// thread. A VRM model's face mesh works as is (expression names are blendshape names); with
// UniVRM, map the names to its expression/blendshape proxy instead. Throwing from a method is
// fine: the bridge turns it into an error ack for that one command (a missing blendshape).
// Compiled in the mateperf tests against a UnityEngine stub (tests/test_unity_package.py).
using System;
using System.Collections.Generic;
using MatePerf.Bridge;
using Newtonsoft.Json.Linq;
using UnityEngine;

namespace MatePerf.Unity.Samples
{
    public sealed class BlendShapeAvatar : MonoBehaviour, IAvatar
    {
        [Tooltip("The face mesh whose blendshapes the expressions set")]
        [SerializeField] SkinnedMeshRenderer face;

        readonly Dictionary<string, double> expressions = new Dictionary<string, double>();
        string model;
        double transitionSpeed = 1.0;
        bool autoBlink = true, headMovement;
        long commandsApplied;

        public void LoadModel(string path) { model = path; commandsApplied++; }

        public void UnloadModel() { ResetExpressions(); model = null; }

        public void SetExpression(string name, double value)
        {
            int index = face.sharedMesh.GetBlendShapeIndex(name);
            if (index < 0) throw new ArgumentException("the face has no blendshape '" + name + "'");
            face.SetBlendShapeWeight(index, (float)(value * 100.0));  // Unity's weights are 0..100
            expressions[name] = value;
            commandsApplied++;
        }

        public void ResetExpressions()
        {
            for (int i = 0; i < face.sharedMesh.blendShapeCount; i++) face.SetBlendShapeWeight(i, 0f);
            expressions.Clear();
            commandsApplied++;
        }

        // Transitions, blinking and head movement belong to the companion's own animation scripts;
        // the sample only records what was asked.
        public void SetTransitionSpeed(double speed) { transitionSpeed = speed; commandsApplied++; }

        public void SetAutoBlink(bool enabled) { autoBlink = enabled; commandsApplied++; }

        public void SetAutoHeadMovement(bool enabled, double? minInterval, double? maxInterval, double? maxAngle)
        {
            headMovement = enabled;
            commandsApplied++;
        }

        public void Echo(int payloadBytes) { commandsApplied++; }

        public JObject Snapshot()
        {
            var shown = new JObject();
            foreach (var kv in expressions) shown[kv.Key] = kv.Value;
            return new JObject
            {
                ["model"] = model,
                ["expressions"] = shown,
                ["transition_speed"] = transitionSpeed,
                ["auto_blink"] = autoBlink,
                ["head_movement_enabled"] = headMovement,
                ["commands_applied"] = commandsApplied,
            };
        }
    }
}
