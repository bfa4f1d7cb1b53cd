// One client of the bridge: its socket, the writer that sends its responses, and the ids it used
// recently (see mateperf/bridge/peer.py, which keeps the same rules).
using System;
using System.Collections.Generic;
using System.Globalization;
using System.Net.Sockets;
using System.Threading;

namespace MatePerf.Bridge
{
    /// Sends one connection's responses without the caller ever waiting on the socket. The
    /// socket is non-blocking: Offer sends at once what the kernel takes when nothing is waiting
    /// before it (the common case, with no thread hand-off in the round trip), and leaves the
    /// rest to this writer's thread, which waits for the socket to drain. When the unsent bytes
    /// would exceed the bound while earlier ones are still unsent, the client is not reading:
    /// Offer returns false and the connection is closed (the caller counts it; this thread logs
    /// it). A single response larger than the bound is still accepted into an empty buffer, so a
    /// big reply is never a drop.
    public sealed class AckWriter
    {
        readonly Socket socket;
        readonly long maxBytes;
        readonly string name;
        readonly Action<string> log;
        readonly Action onExit;
        readonly object gate = new object();
        List<byte[]> chunks = new List<byte[]>(), spare = new List<byte[]>();
        long pendingBytes;
        bool sending;  // the writer thread is sending a taken chunk: Offer must not overtake it
        volatile bool closed;
        string overflow;

        public AckWriter(Socket socket, long maxBytes, string name, Action<string> log, Action onExit)
        {
            this.socket = socket;
            this.maxBytes = maxBytes;
            this.name = name;
            this.log = log;
            this.onExit = onExit;
            new Thread(Run) { IsBackground = true, Name = "bridge-write" }.Start();
        }

        public bool Closed { get { return closed; } }

        // One send call that takes what the non-blocking socket accepts and returns. Mono's
        // Send(byte[], ..., out SocketError) retries until all is sent, spinning on WouldBlock;
        // the buffer-list overload makes a single call and reports WouldBlock or a short count.
        readonly List<ArraySegment<byte>> offerSegment = new List<ArraySegment<byte>>(1);
        readonly List<ArraySegment<byte>> writerSegment = new List<ArraySegment<byte>>(1);

        int SendOnce(List<ArraySegment<byte>> segment, byte[] data, int offset, out SocketError error)
        {
            segment.Clear();
            segment.Add(new ArraySegment<byte>(data, offset, data.Length - offset));
            int n = socket.Send(segment, SocketFlags.None, out error);
            segment.Clear();
            return Math.Max(0, n);
        }

        public long PendingBytes { get { lock (gate) return pendingBytes; } }

        public bool Offer(byte[] payload)
        {
            lock (gate)
            {
                if (closed) return true;  // already gone: the response goes with the connection
                int offset = 0;
                if (chunks.Count == 0 && !sending)
                {
                    SocketError error;
                    int n;
                    try { n = SendOnce(offerSegment, payload, 0, out error); }
                    catch (Exception) { n = 0; error = SocketError.NotConnected; }  // never out of Tick
                    if (error != SocketError.Success && error != SocketError.WouldBlock)
                    {
                        CloseLocked();  // a broken connection: its reader ends it
                        return true;
                    }
                    if (n == payload.Length) return true;
                    offset = Math.Max(0, n);
                }
                int rest = payload.Length - offset;
                if (pendingBytes > 0 && pendingBytes + rest > maxBytes)
                {
                    overflow = "dropped client " + name + ": " + (pendingBytes + rest).ToString(CultureInfo.InvariantCulture)
                        + " bytes of responses unread, over the bound of " + maxBytes.ToString(CultureInfo.InvariantCulture);
                    CloseLocked();
                    return false;
                }
                if (offset > 0)
                {
                    var tail = new byte[rest];
                    Buffer.BlockCopy(payload, offset, tail, 0, rest);
                    payload = tail;
                }
                chunks.Add(payload);
                pendingBytes += rest;
                Monitor.Pulse(gate);
                return true;
            }
        }

        public void Close() { lock (gate) CloseLocked(); }

        void CloseLocked()
        {
            if (closed) return;
            closed = true;
            Monitor.PulseAll(gate);
            // wakes this connection's reader (Receive returns) and a Send blocked on a full buffer
            try { socket.Shutdown(SocketShutdown.Both); } catch (Exception) { }
        }

        void Run()
        {
            try
            {
                while (true)
                {
                    List<byte[]> take;
                    lock (gate)
                    {
                        while (chunks.Count == 0 && !closed) Monitor.Wait(gate);
                        if (closed) break;
                        take = chunks;
                        chunks = spare;
                        spare = take;
                        sending = true;
                    }
                    int total = 0;
                    foreach (var c in take) total += c.Length;
                    byte[] data = take[0];
                    if (take.Count > 1)
                    {
                        data = new byte[total];
                        int at = 0;
                        foreach (var c in take) { Buffer.BlockCopy(c, 0, data, at, c.Length); at += c.Length; }
                    }
                    take.Clear();
                    bool failed = false;
                    int sent = 0;
                    while (sent < data.Length && !closed)
                    {
                        SocketError error;
                        try
                        {
                            int n = SendOnce(writerSegment, data, sent, out error);
                            if (error == SocketError.Success) sent += n;
                            else if (error == SocketError.WouldBlock) socket.Poll(100000, SelectMode.SelectWrite);
                            else failed = true;
                        }
                        catch (Exception) { failed = true; }
                        if (failed) break;
                    }
                    lock (gate)
                    {
                        sending = false;
                        pendingBytes -= total;
                    }
                    if (failed) { Close(); break; }
                }
            }
            finally
            {
                if (overflow != null) { try { log(overflow); } catch (Exception) { } }
                onExit();
            }
        }
    }

    /// The last Window request ids of one connection: a duplicate is caught within the window,
    /// and the memory a connection holds stays bounded however many requests it sends.
    public sealed class RecentIds
    {
        public readonly int Window;
        readonly HashSet<string> ids = new HashSet<string>(StringComparer.Ordinal);
        readonly Queue<string> order = new Queue<string>();
        volatile int count;

        public RecentIds(int window)
        {
            if (window < 1) throw new ArgumentOutOfRangeException("window", window, "must be >= 1");
            Window = window;
        }

        public int Count { get { return count; } }

        /// Remember id; false if it is already among the last Window (the reader thread only).
        public bool Add(string id)
        {
            if (!ids.Add(id)) return false;
            order.Enqueue(id);
            if (order.Count > Window) ids.Remove(order.Dequeue());
            count = ids.Count;
            return true;
        }
    }

    sealed class ClientConnection
    {
        public readonly Socket Socket;
        public readonly string Name;
        public readonly AckWriter Writer;
        public readonly RecentIds SeenIds;
        readonly BridgeServer server;
        int users = 2;  // the reader and the writer: the last one out closes the socket

        // Requests and bytes queued for Tick: each total has one writer (the socket thread puts
        // in, the main thread takes out), so neither needs a lock; a stale read only refuses a
        // little early.
        long queuedIn, queuedInBytes, queuedOut, queuedOutBytes;
        internal bool QueueFullLogged;  // the socket thread only
        // the main thread only: requests drained for Tick and not yet applied, and how many of
        // the leading ones were already counted as deferred
        internal readonly Queue<QueuedRequest> Backlog = new Queue<QueuedRequest>();
        internal int DeferredFront, TickApplied;

        public long QueuedRequests { get { return Interlocked.Read(ref queuedIn) - Interlocked.Read(ref queuedOut); } }
        public long QueuedBytes { get { return Interlocked.Read(ref queuedInBytes) - Interlocked.Read(ref queuedOutBytes); } }

        internal void CountQueued(int bytes)
        {
            Interlocked.Increment(ref queuedIn);
            Interlocked.Add(ref queuedInBytes, bytes);
        }

        internal void CountTaken(int bytes)
        {
            Interlocked.Increment(ref queuedOut);
            Interlocked.Add(ref queuedOutBytes, bytes);
        }

        public ClientConnection(BridgeServer server, Socket socket, string name)
        {
            this.server = server;
            // non-blocking: a send from the main thread takes what the kernel accepts and
            // returns; the reader and the writer wait in Poll instead
            socket.Blocking = false;
            Socket = socket;
            Name = name;
            SeenIds = new RecentIds(server.IdWindow);
            Writer = new AckWriter(socket, server.MaxAckBufferBytes, name, server.SafeLog, Release);
        }

        public bool Open { get { return !Writer.Closed; } }

        /// Never blocks: queues the payload for the writer, or drops a client that stopped reading.
        public void Send(byte[] payload)
        {
            if (!Writer.Offer(payload)) server.CountDroppedClient();
        }

        public void Close() { Writer.Close(); }

        public void Release()
        {
            if (Interlocked.Decrement(ref users) != 0) return;
            try { Socket.Close(); } catch (Exception) { }
            server.Forget(this);
        }
    }
}
