// Unity entry point: a thin MonoBehaviour over BridgeServer (Core/, no UnityEngine there).
// Socket threads queue; Update() runs BridgeServer.Tick() once per frame on the main thread,
// the only thread allowed to touch the VRM avatar. Not compiled by the tests (no UnityEngine
// under Mono); everything it calls is.
using MatePerf.Bridge;
using UnityEngine;

public sealed class PythonBridge : MonoBehaviour
{
    [SerializeField] int port = 5555;
    [SerializeField] string bindAddress = "127.0.0.1";  // loopback unless explicitly changed
    [SerializeField] bool legacyProtocol = false;
    [Tooltip("A component implementing MatePerf.Bridge.IAvatar over the VRM model")]
    [SerializeField] MonoBehaviour avatarComponent;

    BridgeServer server;

    void Awake()
    {
        var avatar = avatarComponent as IAvatar;
        if (avatar == null)
        {
            Debug.LogWarning("PythonBridge: no IAvatar component set; using an in-memory AvatarState");
            avatar = new AvatarState();
        }
        server = new BridgeServer(avatar, bindAddress, port, legacyProtocol);
        server.Start();
        Debug.Log("PythonBridge listening on " + bindAddress + ":" + server.Port);
    }

    void Update()
    {
        server.Tick();
    }

    void OnDestroy()
    {
        if (server != null) server.Dispose();
    }
}
