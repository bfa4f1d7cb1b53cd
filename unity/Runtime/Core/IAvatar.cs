// The avatar the bridge drives. Unity implements it over the VRM model (see PythonBridge.cs);
// the headless host uses AvatarState, an in-memory stand-in. Called on the main thread only; a
// method may throw (a blendshape the model lacks): the server isolates it to that command.
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

    /// Optional: an avatar that can undo the commands applied since a checkpoint. A batch is
    /// all-or-nothing: when one of its commands throws, the server restores the checkpoint it
    /// took before the batch, so none of it stays applied. Without this interface the error ack
    /// says which commands were applied before the failure.
    public interface IAvatarCheckpoint
    {
        object Checkpoint();
        void Restore(object checkpoint);
    }
}
