// Unity entry point: a thin MonoBehaviour over BridgeServer (Runtime/Core/, assembly
// MatePerf.Bridge, no UnityEngine there); this file is assembly MatePerf.Bridge.Unity.
// Socket threads queue; Update() runs BridgeServer.Tick() once per frame on the main thread,
// the only thread allowed to touch the VRM avatar. Tick never waits on the network, never lets an
// avatar exception out, and applies at most the frame budget below. In namespace MatePerf.Unity
// so that it lives beside the companion's own global PythonBridge without a name clash (CS0436).
// What the identity query reports and FrameTimingManager's per-frame times: UnityPeerInfo.cs.
// The tests compile this folder against a stub of the UnityEngine types it uses
// (tests/unity_stub/) and run it under Mono.
using System;
using MatePerf.Bridge;
using UnityEngine;

namespace MatePerf.Unity
{
    [AddComponentMenu("MatePerf/Python Bridge (mateperf)")]
    public sealed class PythonBridge : MonoBehaviour
    {
        [SerializeField] int port = 5555;
        [SerializeField] string bindAddress = "127.0.0.1";  // loopback unless explicitly changed
        [SerializeField] bool legacyProtocol = false;
        [Tooltip("A component implementing MatePerf.Bridge.IAvatar over the VRM model")]
        [SerializeField] MonoBehaviour avatarComponent;
        [Tooltip("Frame budget: commands applied per frame at most (a batch counts its commands); 0 = no limit")]
        [SerializeField] int maxCommandsPerFrame = 0;
        [Tooltip("Frame budget: microseconds of bridge work per frame at most; 0 = no limit")]
        [SerializeField] float maxTickMicroseconds = 2000f;
        [Tooltip("Requests one client may have waiting for the frames; past it a request gets a 'queue full' error")]
        [SerializeField] int maxQueuedRequestsPerClient = BridgeServer.DefaultMaxQueuedRequests;

        BridgeServer server;
        UnityFrameTiming frameTiming;

        void Awake()
        {
            var avatar = avatarComponent as IAvatar;
            if (avatar == null)
            {
                Debug.LogWarning("PythonBridge: no IAvatar component set; using an in-memory AvatarState");
                avatar = new AvatarState();
            }
            try
            {
                frameTiming = new UnityFrameTiming();
                server = new BridgeServer(avatar, bindAddress, port, legacyProtocol)
                {
                    MaxCommandsPerFrame = maxCommandsPerFrame,
                    MaxTickMicros = maxTickMicroseconds,
                    MaxQueuedRequests = maxQueuedRequestsPerClient,
                    Log = message => Debug.LogWarning("PythonBridge: " + message),
                    Identity = UnityPeerInfo.Read(frameTiming.Status),
                };
                if (frameTiming.Available) server.Frames.RecordFrameTiming();
                server.Start();
            }
            catch (Exception e)  // a taken port (another Desktop-Mate running?) or a bad address
            {
                Debug.LogError("PythonBridge: cannot listen on " + bindAddress + ":" + port + " (" + e.Message
                               + "); is another instance running? The bridge is disabled.");
                if (server != null) server.Dispose();
                server = null;
                enabled = false;
                return;
            }
            Debug.Log("PythonBridge listening on " + bindAddress + ":" + server.Port);
        }

        // After every Awake: a frame-rate target or runInBackground set by another script's Awake
        void Start()
        {
            if (server != null) server.Identity = UnityPeerInfo.Read(frameTiming.Status);
        }

        void Update()
        {
            if (server == null) return;
            server.Tick();
            frameTiming.Record(server.Frames);
        }

        void OnDestroy()
        {
            if (server != null) server.Dispose();
        }
    }
}
