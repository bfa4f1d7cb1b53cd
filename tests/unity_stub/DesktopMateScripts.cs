// Stubs of the companion's avatar scripts (Xyon15/desktop-mate, unity/DesktopMateUnity/Assets/
// Scripts/: VRMBlendshapeController.cs, VRMAutoBlinkController.cs, VRM/VRMHeadMovementController.cs,
// VRMLoader.cs), the public members unity/Samples~/DesktopMateAvatar calls, with the companion's
// names, types and signatures and no behaviour: a rename there breaks this build, not the
// user's editor. Global classes, as in the companion. Lives under tests/, never under unity/.
using UnityEngine;

public class VRMBlendshapeController : MonoBehaviour
{
    public float transitionSpeed = 2.0f;
    public void SetExpression(string expressionName, float value) { }
    public void SetTransitionSpeed(float speed) { }
    public void ResetExpressions() { }
}

public class VRMAutoBlinkController : MonoBehaviour
{
    public VRMBlendshapeController blendshapeController;
    public bool isEnabled = false;
    public void SetAutoBlinkEnabled(bool enabled) { }
}

public class VRMHeadMovementController : MonoBehaviour
{
    public bool autoHeadMovement = true;
    public float minInterval = 3.0f;
    public float maxInterval = 7.0f;
    public float movementDuration = 2.0f;
    public float maxRotationAngle = 5.0f;
    public float maxPitchAngle = 2.5f;
    public void SetAutoHeadMovement(bool enabled) { }
    public void UpdateTimingParameters(float min, float max, float duration) { }
    public void UpdateAmplitudeParameters(float maxYaw, float maxPitch) { }
}

public class VRMLoader : MonoBehaviour
{
    public void LoadVRMFromPath(string filePath) { }
    public void UnloadModel() { }
}
