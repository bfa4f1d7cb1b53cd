// What a peer says about itself in reply to the `identity` query, so a run attached to a live
// avatar records what it measured: the peer's kind and version, and what only Unity knows (its
// version, the graphics device and API, the frame-rate target, vSync, runInBackground, whether
// FrameTimingManager's CPU/GPU frame times are recorded). The host fills it before Start():
// HeadlessHost from its options, PythonBridge from Unity's APIs on the main thread. The reply is
// built from these cached values on the socket thread, so it never waits for a frame (an app
// whose Update has stopped still says who it is, and that runInBackground is off).
using Newtonsoft.Json.Linq;

namespace MatePerf.Bridge
{
    public sealed class PeerIdentity
    {
        public const string Available = "available";
        public const string HeadlessFrameTiming = "unavailable: headless peer (no renderer)";

        /// "unity" (PythonBridge in a Unity app), "mateperf-headless" (HeadlessHost).
        public string Peer = "unity";
        public string PeerVersion = BridgeProtocol.PackageVersion;
        /// null where there is no Unity (the headless peer).
        public string UnityVersion, GraphicsDevice, GraphicsApi;
        /// The frame-rate target (Application.targetFrameRate; null for -1, the platform default).
        public double? TargetFps;
        public int? VsyncCount;
        public bool? RunInBackground;
        /// "available" when frame_stats carries FrameTimingManager's per-frame figures, else
        /// "unavailable: <reason>" (never zeros in their place).
        public string FrameTiming = "unavailable: the host did not report FrameTimingManager figures";

        public bool FrameTimingAvailable { get { return FrameTiming == Available; } }

        public JObject ToJson()
        {
            return new JObject
            {
                ["peer"] = Peer,
                ["peer_version"] = PeerVersion,
                ["protocol"] = BridgeProtocol.ProtocolVersion,
                ["unity_version"] = UnityVersion,
                ["graphics_device"] = GraphicsDevice,
                ["graphics_api"] = GraphicsApi,
                ["target_fps"] = TargetFps,
                ["vsync_count"] = VsyncCount,
                ["run_in_background"] = RunInBackground,
                ["frame_timing"] = FrameTiming,
            };
        }
    }
}
