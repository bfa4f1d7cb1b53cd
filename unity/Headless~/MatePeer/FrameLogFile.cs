// HeadlessHost --frame-log PATH: every completed frame as a CSV row `frame,interval_us,tick_us`,
// the same frame numbers and figures as the frame_stats reply, so a test or a user can check a
// window mateperf stored against the peer's own record, read independently of the bridge.
// The main thread only queues a row (no I/O, no lock, never throws); a writer thread appends
// them to the file, flushing at least every 250 ms and at Dispose. A row past MaxPendingRows
// waiting (a stalled disk) is dropped and counted; a failed write stops the log with one line.
using System;
using System.Collections.Concurrent;
using System.Globalization;
using System.IO;
using System.Text;
using System.Threading;

sealed class FrameLogFile : IDisposable
{
    const int MaxPendingRows = 1 << 20, FlushEveryMs = 250;

    struct Row { public long Frame; public int IntervalUs, TickUs; }

    readonly ConcurrentQueue<Row> rows = new ConcurrentQueue<Row>();
    readonly StreamWriter writer;
    readonly Thread thread;
    readonly ManualResetEventSlim stopping = new ManualResetEventSlim(false);
    readonly Action<string> log;
    readonly string path;
    int pending;
    long dropped, written;
    volatile bool failed;

    /// Open (append, UTF-8, the header when the file is new or empty) and start the writer;
    /// throws what FileStream throws for a bad path, before the frame loop starts.
    public FrameLogFile(string path, Action<string> log)
    {
        this.path = path;
        this.log = log;
        var stream = new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.Read);
        writer = new StreamWriter(stream, new UTF8Encoding(false)) { NewLine = "\n" };
        if (stream.Length == 0) writer.WriteLine("frame,interval_us,tick_us");
        writer.Flush();
        thread = new Thread(WriteLoop) { IsBackground = true, Name = "frame-log" };
        thread.Start();
    }

    /// Main thread, once per recorded frame: queue its row.
    public void Add(long frame, int intervalUs, int tickUs)
    {
        if (failed || Volatile.Read(ref pending) >= MaxPendingRows)
        {
            Interlocked.Increment(ref dropped);
            return;
        }
        Interlocked.Increment(ref pending);
        rows.Enqueue(new Row { Frame = frame, IntervalUs = intervalUs, TickUs = tickUs });
    }

    void WriteLoop()
    {
        while (true)
        {
            bool last = stopping.Wait(FlushEveryMs);
            Drain();
            if (last) return;
        }
    }

    void Drain()
    {
        if (failed) return;
        var inv = CultureInfo.InvariantCulture;
        try
        {
            Row row;
            while (rows.TryDequeue(out row))
            {
                Interlocked.Decrement(ref pending);
                writer.Write(row.Frame.ToString(inv));
                writer.Write(',');
                writer.Write(row.IntervalUs.ToString(inv));
                writer.Write(',');
                writer.WriteLine(row.TickUs.ToString(inv));
                written++;
            }
            writer.Flush();
        }
        catch (Exception e)  // a full disk, a removed drive: never out of this thread (it would end the process)
        {
            failed = true;
            log("frame log " + path + ": writing failed (" + e.Message + "); no more rows are written");
        }
    }

    /// Write what is queued, flush and close; says what was dropped, if anything.
    public void Dispose()
    {
        stopping.Set();
        thread.Join();
        try { writer.Dispose(); } catch (IOException) { }
        long lost = Interlocked.Read(ref dropped);
        if (lost > 0)
            log("frame log " + path + ": " + lost.ToString(CultureInfo.InvariantCulture) + " frames not written ("
                + written.ToString(CultureInfo.InvariantCulture) + " written)");
    }
}
