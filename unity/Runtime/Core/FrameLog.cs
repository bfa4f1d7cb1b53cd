// What the main thread did per frame (see mateperf/bridge/frames.py, which this mirrors): for
// the last Capacity frames, the frame interval (start of a frame to the start of the next, µs),
// the time spent in Tick (µs), the commands Tick applied and the requests it left queued. A
// frame is recorded when the next one starts, so only completed frames are logged. Owned by the
// main thread: no locking, fixed arrays allocated once, nothing allocated per frame.
// Frames are numbered from 1 in the order they complete, never reset (Clear empties the window,
// not the count): frame_stats says which frames it holds (first_frame, last_frame), so a window
// can be matched against the host's own frame log (HeadlessHost --frame-log) frame by frame.
// Where the host records FrameTimingManager figures (RecordFrameTiming), each frame also carries
// the CPU main-thread and GPU times Unity reported at that frame; a frame without a reading is
// null in the lists, never 0.
using System;
using System.Globalization;
using System.Text;

namespace MatePerf.Bridge
{
    public sealed class FrameLog
    {
        public const int DefaultCapacity = 65536;

        const int NoReading = -1;

        readonly int[] intervalUs, tickUs, commands, queueDepth;
        int[] cpuMainUs, gpuUs;  // null until RecordFrameTiming
        int head, count;  // ring: the oldest frame is at (head - count) mod capacity
        long recorded;  // frames recorded since the start: the newest frame's number
        long startTicks, tickTicks;
        int frameCommands, frameQueueDepth, frameCpuMainUs = NoReading, frameGpuUs = NoReading;

        public FrameLog(int capacity = DefaultCapacity)
        {
            if (capacity < 1) throw new ArgumentOutOfRangeException("capacity", capacity, "must be >= 1");
            intervalUs = new int[capacity];
            tickUs = new int[capacity];
            commands = new int[capacity];
            queueDepth = new int[capacity];
        }

        public int Count { get { return count; } }

        /// Frames recorded since the start, never reset: the number of the newest frame (0: none).
        public long Recorded { get { return recorded; } }

        /// Whether frames carry CPU main-thread and GPU times (RecordFrameTiming was called).
        public bool RecordsFrameTiming { get { return cpuMainUs != null; } }

        /// Keep FrameTimingManager's figures per frame from now on (two more arrays, allocated
        /// here once); the host calls FrameTiming for each frame it has a reading for.
        public void RecordFrameTiming()
        {
            if (cpuMainUs != null) return;
            var cpu = new int[intervalUs.Length];
            var gpu = new int[intervalUs.Length];
            for (int i = 0; i < cpu.Length; i++) cpu[i] = gpu[i] = NoReading;
            cpuMainUs = cpu;
            gpuUs = gpu;
        }

        /// The current frame's CPU main-thread and GPU times in ms as Unity reports them; a value
        /// that is not a positive finite number is no reading (null in frame_stats), never 0.
        public void FrameTiming(double cpuMainMs, double gpuMs)
        {
            frameCpuMainUs = ReadingMicros(cpuMainMs);
            frameGpuUs = ReadingMicros(gpuMs);
        }

        static int ReadingMicros(double ms)
        {
            if (!(ms > 0) || double.IsInfinity(ms)) return NoReading;
            double us = Math.Round(ms * 1000.0);
            return us >= int.MaxValue ? int.MaxValue : Math.Max(1, (int)us);
        }

        /// The newest recorded frame's interval and Tick time (false when none is recorded yet).
        public bool Newest(out int frameIntervalUs, out int frameTickUs)
        {
            if (recorded == 0) { frameIntervalUs = frameTickUs = 0; return false; }
            int last = (head - 1 + intervalUs.Length) % intervalUs.Length;
            frameIntervalUs = intervalUs[last];
            frameTickUs = tickUs[last];
            return true;
        }

        static int Micros(long stopwatchTicks)
        {
            long us = stopwatchTicks * 1000000L / System.Diagnostics.Stopwatch.Frequency;
            return us > int.MaxValue ? int.MaxValue : (int)us;
        }

        /// The start of a frame (Stopwatch ticks): the previous frame is complete and recorded.
        public void FrameStarted(long nowTicks)
        {
            if (startTicks != 0)
            {
                intervalUs[head] = Micros(nowTicks - startTicks);
                tickUs[head] = Micros(tickTicks);
                commands[head] = frameCommands;
                queueDepth[head] = frameQueueDepth;
                if (cpuMainUs != null)
                {
                    cpuMainUs[head] = frameCpuMainUs;
                    gpuUs[head] = frameGpuUs;
                }
                head = (head + 1) % intervalUs.Length;
                if (count < intervalUs.Length) count++;
                recorded++;
            }
            startTicks = nowTicks;
            tickTicks = 0;
            frameCommands = 0;
            frameQueueDepth = 0;
            frameCpuMainUs = frameGpuUs = NoReading;
        }

        /// The current frame's Tick: its main-thread time, commands applied, requests left queued.
        public void TickDone(long tickStopwatchTicks, int appliedCommands, int leftQueued)
        {
            tickTicks = tickStopwatchTicks;
            frameCommands = appliedCommands;
            frameQueueDepth = leftQueued;
        }

        public void Clear() { count = 0; }

        void AppendList(StringBuilder sb, string name, int[] values, bool readings = false)
        {
            sb.Append(",\"").Append(name).Append("\":[");
            int capacity = values.Length, first = (head - count + capacity) % capacity;
            for (int i = 0; i < count; i++)
            {
                if (i > 0) sb.Append(',');
                int value = values[(first + i) % capacity];
                if (readings && value == NoReading) sb.Append("null");
                else sb.Append(value.ToString(CultureInfo.InvariantCulture));
            }
            sb.Append(']');
        }

        /// The logged frames as the frame_stats reply's data (JSON object text), oldest first;
        /// written directly, as a JArray of 65536 values would cost the frame several ms.
        /// `frameTiming` is the host's PeerIdentity.FrameTiming: the CPU/GPU lists are written
        /// only when it says "available" and frames carry them, and it is in the reply either way.
        public string ToJson(double fps, double frameBusy, string frameTiming)
        {
            var inv = CultureInfo.InvariantCulture;
            var sb = new StringBuilder(96 + count * 24);
            sb.Append("{\"frames\":").Append(count.ToString(inv));
            if (count > 0)
                sb.Append(",\"first_frame\":").Append((recorded - count + 1).ToString(inv))
                  .Append(",\"last_frame\":").Append(recorded.ToString(inv));
            else
                sb.Append(",\"first_frame\":null,\"last_frame\":null");
            sb.Append(",\"fps\":").Append(fps.ToString("R", CultureInfo.InvariantCulture));
            if (fps == Math.Floor(fps) && !double.IsInfinity(fps)) sb.Append(".0");
            sb.Append(",\"frame_busy\":").Append(frameBusy.ToString("R", CultureInfo.InvariantCulture));
            if (frameBusy == Math.Floor(frameBusy)) sb.Append(".0");
            AppendList(sb, "frame_interval_us", intervalUs);
            AppendList(sb, "tick_us", tickUs);
            AppendList(sb, "commands", commands);
            AppendList(sb, "queue_depth", queueDepth);
            bool timing = cpuMainUs != null && frameTiming == PeerIdentity.Available;
            if (timing)
            {
                AppendList(sb, "cpu_main_us", cpuMainUs, true);
                AppendList(sb, "gpu_us", gpuUs, true);
            }
            else if (frameTiming == PeerIdentity.Available)
                frameTiming = "unavailable: the host recorded no FrameTimingManager figures";
            sb.Append(",\"frame_timing\":").Append(Newtonsoft.Json.JsonConvert.ToString(frameTiming ?? "unavailable"));
            return sb.Append('}').ToString();
        }
    }
}
