// What the main thread did per frame (see mateperf/bridge/frames.py, which this mirrors): for
// the last Capacity frames, the frame interval (start of a frame to the start of the next, µs),
// the time spent in Tick (µs), the commands Tick applied and the requests it left queued. A
// frame is recorded when the next one starts, so only completed frames are logged. Owned by the
// main thread: no locking, fixed arrays allocated once, nothing allocated per frame.
using System;
using System.Globalization;
using System.Text;

namespace MatePerf.Bridge
{
    public sealed class FrameLog
    {
        public const int DefaultCapacity = 65536;

        readonly int[] intervalUs, tickUs, commands, queueDepth;
        int head, count;  // ring: the oldest frame is at (head - count) mod capacity
        long startTicks, tickTicks;
        int frameCommands, frameQueueDepth;

        public FrameLog(int capacity = DefaultCapacity)
        {
            if (capacity < 1) throw new ArgumentOutOfRangeException("capacity", capacity, "must be >= 1");
            intervalUs = new int[capacity];
            tickUs = new int[capacity];
            commands = new int[capacity];
            queueDepth = new int[capacity];
        }

        public int Count { get { return count; } }

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
                head = (head + 1) % intervalUs.Length;
                if (count < intervalUs.Length) count++;
            }
            startTicks = nowTicks;
            tickTicks = 0;
            frameCommands = 0;
            frameQueueDepth = 0;
        }

        /// The current frame's Tick: its main-thread time, commands applied, requests left queued.
        public void TickDone(long tickStopwatchTicks, int appliedCommands, int leftQueued)
        {
            tickTicks = tickStopwatchTicks;
            frameCommands = appliedCommands;
            frameQueueDepth = leftQueued;
        }

        public void Clear() { count = 0; }

        void AppendList(StringBuilder sb, string name, int[] values)
        {
            sb.Append(",\"").Append(name).Append("\":[");
            int capacity = values.Length, first = (head - count + capacity) % capacity;
            for (int i = 0; i < count; i++)
            {
                if (i > 0) sb.Append(',');
                sb.Append(values[(first + i) % capacity].ToString(CultureInfo.InvariantCulture));
            }
            sb.Append(']');
        }

        /// The logged frames as the frame_stats reply's data (JSON object text), oldest first;
        /// written directly, as a JArray of 65536 values would cost the frame several ms.
        public string ToJson(double fps, double frameBusy)
        {
            var sb = new StringBuilder(64 + count * 16);
            sb.Append("{\"frames\":").Append(count.ToString(CultureInfo.InvariantCulture));
            sb.Append(",\"fps\":").Append(fps.ToString("R", CultureInfo.InvariantCulture));
            if (fps == Math.Floor(fps) && !double.IsInfinity(fps)) sb.Append(".0");
            sb.Append(",\"frame_busy\":").Append(frameBusy.ToString("R", CultureInfo.InvariantCulture));
            if (frameBusy == Math.Floor(frameBusy)) sb.Append(".0");
            AppendList(sb, "frame_interval_us", intervalUs);
            AppendList(sb, "tick_us", tickUs);
            AppendList(sb, "commands", commands);
            AppendList(sb, "queue_depth", queueDepth);
            return sb.Append('}').ToString();
        }
    }
}
