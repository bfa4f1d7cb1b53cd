// An IAvatar over Desktop-Mate's own avatar scripts, so that MatePerf.Unity.PythonBridge drives
// the companion's avatar exactly as its own bridge (Assets/Scripts/IPC/PythonBridge.cs) did:
// expressions and transition speed through VRMBlendshapeController, blinking through
// VRMAutoBlinkController, head movement through VRMHeadMovementController, load/unload through
// VRMLoader. Those are global classes in the companion's Assembly-CSharp, which no assembly
// definition can reference: this sample therefore has no .asmdef and compiles into
// Assembly-CSharp beside them once imported (Package Manager > Samples > Import).
// What the controllers do with a call is theirs: VRMBlendshapeController queues expressions for
// its own Update and eases towards them at its transition speed, so an ack means "handed to the
// controller this frame", and the face reaches the value over the next frames. A missing
// controller throws, which the bridge turns into an error ack for that one command (as the
// companion's bridge answered "... non configuré"). The mateperf tests compile this file against
// stubs of the four classes (tests/unity_stub/DesktopMateScripts.cs: their signatures only).
using System;
using System.Collections.Generic;
using MatePerf.Bridge;
using Newtonsoft.Json.Linq;
using UnityEngine;

namespace MatePerf.Unity.Samples
{
    [AddComponentMenu("MatePerf/Desktop-Mate Avatar (mateperf)")]
    public sealed class DesktopMateAvatar : MonoBehaviour, IAvatar
    {
        [Tooltip("The companion's VRMBlendshapeController (expressions, transition speed)")]
        [SerializeField] VRMBlendshapeController blendshapeController;
        [Tooltip("The companion's VRMAutoBlinkController (set_auto_blink)")]
        [SerializeField] VRMAutoBlinkController autoBlinkController;
        [Tooltip("The companion's VRMHeadMovementController (set_auto_head_movement)")]
        [SerializeField] VRMHeadMovementController headMovementController;
        [Tooltip("The companion's VRMLoader (load_model, unload_model)")]
        [SerializeField] VRMLoader vrmLoader;

        // what was asked, for the stats query: the controllers keep their state private
        readonly SortedDictionary<string, double> expressions = new SortedDictionary<string, double>(StringComparer.Ordinal);
        string model;
        double transitionSpeed = double.NaN;
        bool? autoBlink, headMovement;
        long commandsApplied;

        static T Need<T>(T component, string command) where T : class
        {
            if (component == null)
                throw new InvalidOperationException(command + ": no " + typeof(T).Name + " set on DesktopMateAvatar");
            return component;
        }

        public void LoadModel(string path)
        {
            Need(vrmLoader, "load_model").LoadVRMFromPath(path ?? "");
            model = path;
            commandsApplied++;
        }

        public void UnloadModel()
        {
            Need(vrmLoader, "unload_model").UnloadModel();
            model = null;
            expressions.Clear();
            commandsApplied++;
        }

        public void SetExpression(string name, double value)
        {
            Need(blendshapeController, "set_expression").SetExpression(name, (float)value);
            expressions[name] = value;
            commandsApplied++;
        }

        public void ResetExpressions()
        {
            Need(blendshapeController, "reset_expressions").ResetExpressions();
            expressions.Clear();
            commandsApplied++;
        }

        public void SetTransitionSpeed(double speed)
        {
            Need(blendshapeController, "set_transition_speed").SetTransitionSpeed((float)speed);
            transitionSpeed = speed;
            commandsApplied++;
        }

        public void SetAutoBlink(bool enabled)
        {
            Need(autoBlinkController, "set_auto_blink").SetAutoBlinkEnabled(enabled);
            autoBlink = enabled;
            commandsApplied++;
        }

        public void SetAutoHeadMovement(bool enabled, double? minInterval, double? maxInterval, double? maxAngle)
        {
            var head = Need(headMovementController, "set_auto_head_movement");
            head.SetAutoHeadMovement(enabled);
            // only what the request carries; the controller clamps to its own ranges
            if (minInterval.HasValue || maxInterval.HasValue)
                head.UpdateTimingParameters((float)(minInterval ?? head.minInterval), (float)(maxInterval ?? head.maxInterval),
                                            head.movementDuration);
            // one angle on the wire: yaw gets it, pitch half of it, as the companion's bridge maps it
            if (maxAngle.HasValue) head.UpdateAmplitudeParameters((float)maxAngle.Value, (float)(maxAngle.Value / 2));
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
                ["transition_speed"] = double.IsNaN(transitionSpeed) ? null : (JToken)transitionSpeed,
                ["auto_blink"] = autoBlink,
                ["head_movement_enabled"] = headMovement,
                ["commands_applied"] = commandsApplied,
            };
        }
    }
}
