// The avatar the bridge drives. Unity implements it over the VRM model (see PythonBridge.cs);
// the headless host uses AvatarState, an in-memory stand-in. Called on the main thread only.
using Newtonsoft.Json.Linq;

namespace MatePerf.Bridge
{
    public interface IAvatar
    {
        void LoadModel(string path);
        void UnloadModel();
        void SetExpression(string name, double value);
        void ResetExpressions();
        void SetTransitionSpeed(double speed);
        void SetAutoBlink(bool enabled);
        void SetAutoHeadMovement(bool enabled, double? minInterval, double? maxInterval, double? maxAngle);
        void Echo(int payloadBytes);
        JObject Snapshot();
    }
}
