"""GPU offload: how much VRAM a layer split needs, which profile fits, and loading that falls back.

- `layout`: what the GGUF header says about sizes (hyperparameters, tensor bytes by placement).
- `estimate`: VRAM predicted from the GGUF file alone (tensors, KV cache, compute buffers,
  and a device overhead measured once per device).
- `projection`: llama.cpp's own projection, from a no-allocation dry run in a child process.
- `calibration`: the device overhead (CUDA context, cuBLAS, pools), measured and stored.
- `profiles`: performance / layers_81pct / low_memory / cpu_fallback, the selection, the fallback
  chain that records every attempt.
- `companion_profiles`: the companion's own GPU_PROFILES as llama.cpp loads them, against
  what their comments say (one sentence with the figures where they differ).
- `trial`: one measured load-and-generate of a configuration, optionally in a child process.
- `tinygguf`: a small llama-architecture GGUF written with the `gguf` package.

NVML (the one reader, `NvmlDevice`, and the monitor) is an instrument: `mateperf.trackers.gpu`.
"""
