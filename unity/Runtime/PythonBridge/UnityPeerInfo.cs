// What only Unity knows, for the bridge's identity query and frame_stats: read on the main
// thread (Unity's APIs may not be called from the socket threads), cached in a PeerIdentity.
// FrameTimingManager: from Unity 2022.1 on, FrameTiming has cpuMainThreadFrameTime and
// FrameTimingManager.IsFeatureEnabled() says whether the player collects timings (Project
// Settings > Player > Frame Timing Stats; always on in development builds). Before 2022.1 there
// is no main-thread CPU time, so the figures are reported unavailable rather than another
// measure under the same name. gpuFrameTime is 0 where the platform or graphics API has no GPU
// timer: that frame's GPU time is then null, never 0. Unity reports a frame's timings a few
// frames after it ends: each frame carries the newest timings Unity had finished at that frame
// (each finished frame once, by its frameStartTimestamp; null when none was new).
using MatePerf.Bridge;
using UnityEngine;
using UnityEngine.Rendering;

namespace MatePerf.Unity
{
    public static class UnityPeerInfo
    {
        /// The identity of this Unity app now (main thread only).
        public static PeerIdentity Read(string frameTiming)
        {
            int target = Application.targetFrameRate;
            return new PeerIdentity
            {
                Peer = "unity",
                UnityVersion = Application.unityVersion,
                GraphicsDevice = SystemInfo.graphicsDeviceName,
                GraphicsApi = SystemInfo.graphicsDeviceType.ToString(),
                TargetFps = target > 0 ? target : (double?)null,
                VsyncCount = QualitySettings.vSyncCount,
                RunInBackground = Application.runInBackground,
                FrameTiming = frameTiming,
            };
        }
    }

    /// FrameTimingManager's CPU main-thread and GPU time per frame, where this Unity provides them.
    public sealed class UnityFrameTiming
    {
        public readonly string Status;
#if UNITY_2022_1_OR_NEWER
        readonly FrameTiming[] latest = new FrameTiming[1];
        ulong lastFrameStart;  // the frame whose timings were recorded last: each is kept once
#endif

        public UnityFrameTiming()
        {
#if UNITY_2022_1_OR_NEWER
            if (SystemInfo.graphicsDeviceType == GraphicsDeviceType.Null)
                Status = "unavailable: no graphics device (batch mode or -nographics)";
            else if (!FrameTimingManager.IsFeatureEnabled())
                Status = "unavailable: Frame Timing Stats is off (Project Settings > Player > Other Settings)";
            else
                Status = PeerIdentity.Available;
#else
            Status = "unavailable: FrameTimingManager has no main-thread CPU time before Unity 2022.1";
#endif
        }

        public bool Available { get { return Status == PeerIdentity.Available; } }

        /// Main thread, once per frame after Tick: the newest timings into the frame being logged.
        public void Record(FrameLog frames)
        {
#if UNITY_2022_1_OR_NEWER
            if (!Available) return;
            FrameTimingManager.CaptureFrameTimings();
            // no new finished frame since the last one recorded: this frame's entry stays null
            if (FrameTimingManager.GetLatestTimings(1, latest) == 0 || latest[0].frameStartTimestamp == lastFrameStart) return;
            lastFrameStart = latest[0].frameStartTimestamp;
            frames.FrameTiming(latest[0].cpuMainThreadFrameTime, latest[0].gpuFrameTime);
#endif
        }
    }
}
