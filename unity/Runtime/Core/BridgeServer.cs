// The Unity side of the bridge without UnityEngine: socket threads read, validate and queue;
// Tick(), called once per frame on the main thread, applies queued commands to the avatar and
// acks them. Bad input is answered from the socket thread and never queued.
//
// What Tick never does, because it runs inside the game's frame (mateperf/bridge/peer.py keeps
// the same rules):
// - wait on the network: acks go to each connection's AckWriter, which sends without blocking
//   what the kernel takes and leaves the rest to its own thread, within a bounded buffer; a
//   client that stops reading is dropped at the bound (Counters.DroppedClients, a Log line),
//   never waited for;
// - let one command's exception escape: that command gets an error ack (a batch is restored to
//   its checkpoint and gets one), Counters.ApplyErrors counts it, the frame goes on;
// - exceed its budget: at most MaxCommandsPerFrame commands and/or MaxTickMicros of work per
//   frame (0: no limit; a batch is never split, and a frame always applies at least one
//   request); the rest waits, in order, for the next frame (Counters.Deferred, QueueDepth).
// The incoming side is bounded per connection: a request that would take a connection past
// MaxQueuedRequests requests or MaxQueuedBytes bytes of request lines waiting for Tick is refused
// at once from the socket thread with a "queue full: ..." error carrying its id
// (Counters.QueueFull and Rejected; the first refusal of a connection is logged), so a client
// sending faster than the frame budget is told so and memory stays bounded (a request into an
// empty queue is always taken). Tick serves connections in turn, one request of each connection
// with work before a second of any: a flooding client delays its own requests, not another's.
// State is bounded: duplicate ids are detected over the last IdWindow ids of a connection,
// closed connections are pruned, a failing accept backs off.
// The identity query is answered from the socket thread, from the host's cached PeerIdentity: it
// needs nothing from the frame, and an app whose frames have stopped (runInBackground off, the
// window without focus) can still say so. A legacy peer answers none of the queries.
// ApplyDelayMs stands in for a slow avatar: the main thread spends that long on every command it
// applies (each command of a batch too), a known answer for the latency benchmarks.
using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Net;
using System.Net.Sockets;
using System.Threading;
using Newtonsoft.Json.Linq;

namespace MatePerf.Bridge
{
    public sealed class BridgeCounters
    {
        public long Received, Applied, AppliedCommands, Rejected, Connections;
        public long DroppedClients, ApplyErrors, Deferred, AcceptErrors, QueueFull;

        public JObject ToJson()
        {
            return new JObject
            {
                ["received"] = Interlocked.Read(ref Received),
                ["applied"] = Interlocked.Read(ref Applied),
                ["applied_commands"] = Interlocked.Read(ref AppliedCommands),
                ["rejected"] = Interlocked.Read(ref Rejected),
                ["connections"] = Interlocked.Read(ref Connections),
                ["dropped_clients"] = Interlocked.Read(ref DroppedClients),
                ["apply_errors"] = Interlocked.Read(ref ApplyErrors),
                ["deferred"] = Interlocked.Read(ref Deferred),
                ["accept_errors"] = Interlocked.Read(ref AcceptErrors),
                ["queue_full"] = Interlocked.Read(ref QueueFull),
            };
        }
    }

    struct QueuedRequest
    {
        public ClientConnection Connection;
        public Request Request;
        public string IdJson;  // the request id as JSON, written into its ack ("null": none)
        public long RecvNs;
        public int Bytes;  // the request line on the wire, with its newline
    }

    sealed class BatchFailedException : Exception
    {
        public BatchFailedException(string message) : base(message) { }
    }

    public sealed class BridgeServer : IDisposable
    {
        public const long DefaultMaxAckBufferBytes = 1 << 20;
        public const int DefaultIdWindow = 4096;
        // the incoming bound per connection, as in mateperf/bridge/peer.py
        public const int DefaultMaxQueuedRequests = 4096;
        public const long DefaultMaxQueuedBytes = 4 << 20;
        const int FirstAcceptPauseMs = 10, LongestAcceptPauseMs = 1000;

        // What the original bridge acked from its socket thread before the main thread ran it.
        static readonly HashSet<string> LegacyEarlyAck = new HashSet<string>
        {
            "set_expression", "reset_expressions", "set_transition_speed", "set_auto_blink",
            "set_auto_head_movement", "echo",
        };

        public readonly BridgeCounters Counters = new BridgeCounters();
        public readonly bool Legacy;
        public readonly int MaxLineBytes;
        public readonly double ApplyDelayMs;
        public long Frame;
        public int Port { get; private set; }

        /// Unsent response bytes a connection may hold before its client is dropped as not reading.
        public long MaxAckBufferBytes = DefaultMaxAckBufferBytes;
        /// Request ids kept per connection for duplicate detection.
        public int IdWindow = DefaultIdWindow;
        /// Requests, and bytes of request lines, a connection may have waiting for Tick; a request
        /// past either gets a "queue full" error instead of a place in the queue.
        public int MaxQueuedRequests = DefaultMaxQueuedRequests;
        public long MaxQueuedBytes = DefaultMaxQueuedBytes;
        /// Set by a host that paces its own frames (HeadlessHost): how late a 1 ms sleep ends
        /// (median, µs) and the tail it yields through before each frame. Null in Unity, whose
        /// player loop paces the frames.
        public double? TimerOvershootMicros, SpinTailMicros;
        /// Set by such a host too: the timer resolution it asked the OS for ("1 ms
        /// (timeBeginPeriod)", "unavailable: ...", "not needed on this OS"), and its main
        /// thread's time asleep so far (s), so a client can tell the share it was awake.
        public string TimerResolution;
        public double? MainSleptSeconds;
        /// The frame budget: commands (a batch counts its commands) and µs of Tick; 0: no limit.
        public int MaxCommandsPerFrame;
        public double MaxTickMicros;
        /// Where the bridge reports what it did on its own (a dropped client, accept errors);
        /// called from socket threads, never from Tick. PythonBridge routes it to Debug.LogWarning.
        public Action<string> Log = delegate { };

        /// The last FrameLog.DefaultCapacity frames' interval and Tick time, for frame_stats.
        public readonly FrameLog Frames = new FrameLog();
        /// What the host runs at, reported by frame_stats (the core does not pace frames).
        public double Fps;
        /// Share of each frame the host spends busy after Tick (HeadlessHost --frame-busy).
        public double FrameBusy;

        /// What the identity query answers; the host sets it before Start (and may replace it
        /// later with a new object: the socket threads read whichever is current).
        public PeerIdentity Identity
        {
            get { return Volatile.Read(ref identity); }
            set { Volatile.Write(ref identity, value ?? new PeerIdentity()); }
        }
        PeerIdentity identity = new PeerIdentity();

        /// Set whenever a request is queued (or left for the next frame by the budget), so an
        /// unpaced host can sleep until there is work.
        public readonly AutoResetEvent WorkArrived = new AutoResetEvent(false);

        readonly IAvatar avatar;
        readonly TcpListener listener;
        readonly ConcurrentQueue<QueuedRequest> queue = new ConcurrentQueue<QueuedRequest>();
        // main thread only: connections with a backlog, in the order Tick serves them
        readonly Queue<ClientConnection> active = new Queue<ClientConnection>();
        int backlogCount;  // main thread only: requests in the connections' backlogs
        readonly HashSet<ClientConnection> connections = new HashSet<ClientConnection>();
        volatile bool stopping;
        int frameCommands;  // commands applied in the current frame (a batch's each)
        readonly System.Text.StringBuilder ackText = new System.Text.StringBuilder(256);  // main thread only

        public BridgeServer(IAvatar avatar, string host = "127.0.0.1", int port = 5555, bool legacy = false,
                            int maxLineBytes = BridgeProtocol.DefaultMaxLineBytes, double applyDelayMs = 0)
        {
            if (applyDelayMs < 0 || double.IsNaN(applyDelayMs))
                throw new ArgumentOutOfRangeException("applyDelayMs", applyDelayMs, "must be >= 0");
            this.avatar = avatar;
            Legacy = legacy;
            MaxLineBytes = maxLineBytes;
            ApplyDelayMs = applyDelayMs;
            listener = new TcpListener(IPAddress.Parse(host), port);
        }

        /// Requests received and not yet applied (main thread).
        public int QueueDepth { get { return backlogCount + queue.Count; } }

        /// CLOCK_MONOTONIC nanoseconds on Linux (Mono's Stopwatch), comparable with Python's
        /// time.perf_counter_ns() on the same host.
        public static long NowNs()
        {
            long ticks = Stopwatch.GetTimestamp();
            if (Stopwatch.Frequency == 1000000000L) return ticks;
            if (1000000000L % Stopwatch.Frequency == 0) return ticks * (1000000000L / Stopwatch.Frequency);
            return (long)(ticks * (1e9 / Stopwatch.Frequency));
        }

        internal void SafeLog(string message)
        {
            try { Log(message); } catch (Exception) { }
        }

        internal void CountDroppedClient() { Interlocked.Increment(ref Counters.DroppedClients); }

        internal void Forget(ClientConnection conn)
        {
            lock (connections) connections.Remove(conn);
        }

        /// Bind and listen; throws SocketException when the port is taken (nothing is left open).
        public void Start()
        {
            if (Environment.OSVersion.Platform == PlatformID.Win32NT)
                // Windows lets a second socket bind a port in use unless it is exclusive
                listener.ExclusiveAddressUse = true;
            else
                // a restarted peer must rebind its port while old connections sit in TIME_WAIT;
                // on Linux and macOS this never lets two listeners share the port
                listener.Server.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            listener.Start();
            Port = ((IPEndPoint)listener.LocalEndpoint).Port;
            new Thread(AcceptLoop) { IsBackground = true, Name = "bridge-accept" }.Start();
        }

        void AcceptLoop()
        {
            int pauseMs = FirstAcceptPauseMs;
            bool failing = false;
            while (!stopping)
            {
                Socket socket;
                try { socket = listener.AcceptSocket(); }
                catch (Exception e)
                {
                    if (stopping) return;
                    // a persistent error (no file descriptors left) must not spin: back off
                    Interlocked.Increment(ref Counters.AcceptErrors);
                    if (!failing) SafeLog("accept failed (" + e.Message + "); retrying with backoff up to 1 s");
                    failing = true;
                    Thread.Sleep(pauseMs);
                    pauseMs = Math.Min(pauseMs * 2, LongestAcceptPauseMs);
                    continue;
                }
                if (failing) SafeLog("accept works again");
                failing = false;
                pauseMs = FirstAcceptPauseMs;
                try
                {
                    socket.NoDelay = true;
                    var conn = new ClientConnection(this, socket, socket.RemoteEndPoint.ToString());
                    lock (connections) connections.Add(conn);
                    Interlocked.Increment(ref Counters.Connections);
                    conn.Send(BridgeProtocol.Encode(BridgeProtocol.Greeting(Legacy)));
                    new Thread(() => ReadLoop(conn)) { IsBackground = true, Name = "bridge-read" }.Start();
                }
                catch (Exception e)
                {
                    SafeLog("could not serve a new client: " + e.Message);
                    try { socket.Close(); } catch (Exception) { }
                }
            }
        }

        void ReadLoop(ClientConnection conn)
        {
            var lines = new LineBuffer(MaxLineBytes);
            var chunk = new byte[1 << 16];
            var ready = new List<byte[]>();
            try
            {
                while (!stopping && conn.Open)
                {
                    // the socket is non-blocking (see ClientConnection): wait for data, EOF or a
                    // shutdown by the writer, then take what is there
                    if (!conn.Socket.Poll(1000000, SelectMode.SelectRead)) continue;
                    SocketError error;
                    int n = conn.Socket.Receive(chunk, 0, chunk.Length, SocketFlags.None, out error);
                    if (error == SocketError.WouldBlock) continue;
                    if (error != SocketError.Success || n <= 0) break;
                    long recvNs = NowNs();
                    ready.Clear();
                    lines.Feed(chunk, n, ready);
                    foreach (var line in ready) HandleLine(conn, line, recvNs);
                }
            }
            catch (Exception e) when (e is SocketException || e is ObjectDisposedException || e is IOException) { }
            finally
            {
                conn.Close();
                conn.Release();
            }
        }

        void Reject(ClientConnection conn, string message, JToken id, string command)
        {
            Interlocked.Increment(ref Counters.Rejected);
            conn.Send(BridgeProtocol.Encode(BridgeProtocol.Response(command, "error", message, id, Legacy)));
        }

        void HandleLine(ClientConnection conn, byte[] line, long recvNs)
        {
            if (line == null)
            {
                Interlocked.Increment(ref Counters.Received);
                Reject(conn, "line exceeds " + BridgeProtocol.Number(MaxLineBytes) + " bytes", null, null);
                return;
            }
            bool blank = true;
            foreach (var b in line) if (b != ' ' && b != '\t' && b != '\r') { blank = false; break; }
            if (blank) return;
            Request request;
            try { request = BridgeProtocol.DecodeRequest(line, 0, line.Length, Legacy); }
            catch (ProtocolException e)
            {
                Interlocked.Increment(ref Counters.Received);
                Reject(conn, e.Message, e.RequestId, e.Command);
                return;
            }
            bool query = BridgeProtocol.IsQuery(request.Command);
            if (request.Command == "identity")
            {
                AnswerIdentity(conn, request, recvNs);
                return;
            }
            if (!query) Interlocked.Increment(ref Counters.Received);
            int size = line.Length + 1;  // as on the wire, with its newline
            long queued = conn.QueuedRequests, queuedBytes = conn.QueuedBytes;
            if (queued > 0 && (queued >= MaxQueuedRequests || queuedBytes + size > MaxQueuedBytes))
            {
                RefuseQueueFull(conn, request, query, queued, queuedBytes);
                return;
            }
            string key = "null";
            if (request.Id != null)
            {
                key = request.Id.ToString(Newtonsoft.Json.Formatting.None);
                if (!conn.SeenIds.Add(key))
                {
                    if (query)  // answered, but queries are never counted
                        conn.Send(BridgeProtocol.Encode(BridgeProtocol.Response(request.Command, "error", "duplicate id " + key, request.Id, Legacy)));
                    else
                        Reject(conn, "duplicate id " + key, request.Id, request.Command);
                    return;
                }
            }
            if (Legacy && LegacyEarlyAck.Contains(request.Command))
                conn.Send(BridgeProtocol.Encode(BridgeProtocol.Response(request.Command, "success", "queued", null, true)));
            conn.CountQueued(size);
            queue.Enqueue(new QueuedRequest { Connection = conn, Request = request, IdJson = key, RecvNs = recvNs, Bytes = size });
            WorkArrived.Set();
        }

        /// The identity reply, on the socket thread: the envelope of stats (frame: the frame
        /// running when it was answered), never queued, never counted.
        void AnswerIdentity(ClientConnection conn, Request request, long recvNs)
        {
            string key = request.Id != null ? request.Id.ToString(Newtonsoft.Json.Formatting.None) : null;
            if (key != null && !conn.SeenIds.Add(key))
            {
                conn.Send(BridgeProtocol.Encode(BridgeProtocol.Response("identity", "error", "duplicate id " + key, request.Id, Legacy)));
                return;
            }
            var reply = BridgeProtocol.Response("identity", "success", "applied", request.Id, Legacy);
            reply["data"] = Identity.ToJson();
            reply["frame"] = Interlocked.Read(ref Frame);
            reply["recv_ns"] = recvNs;
            reply["apply_ns"] = NowNs();
            conn.Send(BridgeProtocol.Encode(reply));
        }

        void RefuseQueueFull(ClientConnection conn, Request request, bool query, long queued, long queuedBytes)
        {
            string bound = BridgeProtocol.Number(MaxQueuedRequests) + " requests or "
                + MaxQueuedBytes.ToString(System.Globalization.CultureInfo.InvariantCulture) + " bytes";
            string waiting = queued.ToString(System.Globalization.CultureInfo.InvariantCulture) + " requests ("
                + queuedBytes.ToString(System.Globalization.CultureInfo.InvariantCulture) + " bytes)";
            string message = "queue full: " + waiting + " from this connection wait for the main thread, at the bound of "
                + bound + "; wait for acks before sending more";
            if (query)  // answered, but queries are never counted
                conn.Send(BridgeProtocol.Encode(BridgeProtocol.Response(request.Command, "error", message, request.Id, Legacy)));
            else
            {
                Interlocked.Increment(ref Counters.QueueFull);
                Reject(conn, message, request.Id, request.Command);
            }
            if (!conn.QueueFullLogged)
            {
                conn.QueueFullLogged = true;
                SafeLog("client " + conn.Name + " sends faster than the frame budget: " + waiting + " queued, at the bound of "
                        + bound + "; its requests get \"queue full\" errors until the main thread catches up (counter queue_full)");
            }
        }

        void ApplyOne(string command, JObject data)
        {
            switch (command)
            {
                case "load_model": avatar.LoadModel((string)data["path"]); break;
                case "unload_model": avatar.UnloadModel(); break;
                case "set_expression": avatar.SetExpression((string)data["name"], data["value"].Value<double>()); break;
                case "reset_expressions": avatar.ResetExpressions(); break;
                case "set_transition_speed": avatar.SetTransitionSpeed(data["speed"].Value<double>()); break;
                case "set_auto_blink": avatar.SetAutoBlink(data["enabled"].Value<bool>()); break;
                case "set_auto_head_movement":
                    avatar.SetAutoHeadMovement(data["enabled"].Value<bool>(), (double?)data["min_interval"],
                                               (double?)data["max_interval"], (double?)data["max_angle"]);
                    break;
                case "echo": avatar.Echo(((string)data["payload"]).Length); break;
                default: throw new InvalidOperationException("unvalidated command " + command);
            }
            if (ApplyDelayMs > 0) Hold(ApplyDelayMs);
        }

        /// Occupy the calling thread for `ms`: Thread.Sleep has millisecond resolution, so sleep
        /// to within a millisecond of the end and yield the rest, as the frame loop does.
        public static void Hold(double ms)
        {
            long end = Stopwatch.GetTimestamp() + (long)(ms * Stopwatch.Frequency / 1000.0);
            while (true)
            {
                long left = end - Stopwatch.GetTimestamp();
                if (left <= 0) return;
                long leftMs = left * 1000 / Stopwatch.Frequency;
                if (leftMs > 1) Thread.Sleep((int)(leftMs - 1));
                else Thread.Yield();
            }
        }

        static string Describe(Exception e) { return e.GetType().Name + ": " + e.Message; }

        void ApplyBatch(JArray subs)
        {
            var revertible = avatar as IAvatarCheckpoint;
            object checkpoint = revertible != null ? revertible.Checkpoint() : null;
            for (int i = 0; i < subs.Count; i++)
            {
                var sub = (JObject)subs[i];
                string command = (string)sub["command"];
                try { ApplyOne(command, sub["data"] as JObject ?? new JObject()); }
                catch (Exception e)
                {
                    string outcome;
                    if (revertible != null)
                    {
                        try { revertible.Restore(checkpoint); outcome = "the batch was not applied"; }
                        catch (Exception r) { outcome = "restoring the avatar failed too (" + Describe(r) + ")"; }
                    }
                    else
                        outcome = i == 0 ? "the batch was not applied"
                            : "commands 0.." + BridgeProtocol.Number(i - 1) + " stay applied (the avatar has no checkpoint)";
                    throw new BatchFailedException("batch.commands[" + BridgeProtocol.Number(i) + "]: " + command
                                                   + " failed: " + Describe(e) + "; " + outcome);
                }
            }
        }

        JObject BridgeState()
        {
            int open, seenIds = 0;
            long unsent = 0, queuedRequests = 0, queuedBytes = 0;
            lock (connections)
            {
                open = connections.Count;
                foreach (var c in connections)
                {
                    seenIds = Math.Max(seenIds, c.SeenIds.Count);
                    unsent += c.Writer.PendingBytes;
                    queuedRequests += c.QueuedRequests;
                    queuedBytes += c.QueuedBytes;
                }
            }
            return new JObject
            {
                ["open_connections"] = open,
                ["queue_depth"] = QueueDepth,
                ["seen_ids"] = seenIds,
                ["ack_buffer_bytes"] = unsent,
                ["id_window"] = IdWindow,
                ["max_ack_buffer_bytes"] = MaxAckBufferBytes,
                ["max_commands_per_frame"] = MaxCommandsPerFrame,
                ["max_tick_us"] = MaxTickMicros,
                ["queued_requests"] = queuedRequests,
                ["queued_bytes"] = queuedBytes,
                ["max_queued_requests"] = MaxQueuedRequests,
                ["max_queued_bytes"] = MaxQueuedBytes,
                ["timer_overshoot_us"] = TimerOvershootMicros,
                ["spin_tail_us"] = SpinTailMicros,
                ["timer_resolution"] = TimerResolution,
                ["main_slept_s"] = MainSleptSeconds,
                ["clock_s"] = (double)Stopwatch.GetTimestamp() / Stopwatch.Frequency,
            };
        }

        /// Apply one request (throws what the avatar throws); its success reply, or null when a
        /// legacy peer already answered it from the socket thread.
        byte[] Run(QueuedRequest item)
        {
            var request = item.Request;
            JObject reply = null;
            int count = -1;
            if (request.Command == "stats")
            {
                reply = BridgeProtocol.Response("stats", "success", "applied", request.Id, Legacy);
                reply["data"] = new JObject
                {
                    ["counters"] = Counters.ToJson(), ["state"] = avatar.Snapshot(), ["bridge"] = BridgeState(),
                };
            }
            else if (request.Command == "frame_stats")
            {
                reply = BridgeProtocol.Response("frame_stats", "success", "applied", request.Id, Legacy);
                reply["data"] = new JRaw(Frames.ToJson(Fps, FrameBusy, Identity.FrameTiming));
                var reset = request.Data["reset"];
                if (reset == null || reset.Value<bool>()) Frames.Clear();
            }
            else if (request.Command == "batch")
            {
                var subs = (JArray)request.Data["commands"];
                ApplyBatch(subs);
                Interlocked.Increment(ref Counters.Applied);
                Interlocked.Add(ref Counters.AppliedCommands, subs.Count);
                frameCommands += subs.Count;
                count = subs.Count;
            }
            else
            {
                ApplyOne(request.Command, request.Data);
                Interlocked.Increment(ref Counters.Applied);
                Interlocked.Increment(ref Counters.AppliedCommands);
                frameCommands++;
                if (Legacy && LegacyEarlyAck.Contains(request.Command)) return null;
            }
            if (Legacy)
                return BridgeProtocol.Encode(reply ?? BridgeProtocol.Response(request.Command, "success", "applied", null, true));
            if (reply == null)
                return BridgeProtocol.EncodeAck(ackText, request.Command, item.IdJson, count, Frame, item.RecvNs, NowNs());
            reply["frame"] = Frame;
            reply["recv_ns"] = item.RecvNs;
            reply["apply_ns"] = NowNs();
            return BridgeProtocol.Encode(reply);
        }

        /// One request in isolation: its ack, or its error response if applying it threw.
        byte[] Apply(QueuedRequest item)
        {
            try { return Run(item); }
            catch (Exception e)
            {
                var request = item.Request;
                Interlocked.Increment(ref Counters.ApplyErrors);
                if (!BridgeProtocol.IsQuery(request.Command)) Interlocked.Increment(ref Counters.Rejected);
                string message = e is BatchFailedException ? e.Message : request.Command + " failed: " + Describe(e);
                return BridgeProtocol.Encode(BridgeProtocol.Response(request.Command, "error", message, request.Id, Legacy));
            }
        }

        static int Cost(Request request)
        {
            if (request.Command == "batch") return ((JArray)request.Data["commands"]).Count;
            return BridgeProtocol.IsQuery(request.Command) ? 0 : 1;
        }

        /// One frame, on the main thread: apply what is queued, within the budget, one request of
        /// each connection in turn, and hand the acks to the writers. Returns how many requests
        /// were applied (or got an apply error).
        public int Tick()
        {
            long start = Stopwatch.GetTimestamp();
            Frames.FrameStarted(start);
            frameCommands = 0;
            Interlocked.Increment(ref Frame);  // read by the identity reply on a socket thread
            QueuedRequest item;
            while (queue.TryDequeue(out item))
            {
                var owner = item.Connection;
                if (owner.Backlog.Count == 0) active.Enqueue(owner);
                owner.Backlog.Enqueue(item);
                backlogCount++;
            }
            long maxTickTicks = MaxTickMicros > 0 ? (long)(MaxTickMicros * Stopwatch.Frequency / 1e6) : 0;
            Dictionary<ClientConnection, List<byte[]>> acks = null;
            int n = 0, commands = 0;
            while (active.Count > 0)
            {
                var conn = active.Peek();
                item = conn.Backlog.Peek();
                int cost = Cost(item.Request);
                if (n > 0 && ((MaxCommandsPerFrame > 0 && commands + cost > MaxCommandsPerFrame)
                              || (maxTickTicks > 0 && Stopwatch.GetTimestamp() - start >= maxTickTicks)))
                    break;
                conn.Backlog.Dequeue();
                active.Dequeue();
                backlogCount--;
                if (conn.Backlog.Count > 0)
                {
                    conn.TickApplied++;
                    active.Enqueue(conn);
                }
                else
                    conn.TickApplied = conn.DeferredFront = 0;
                conn.CountTaken(item.Bytes);
                n++;
                commands += cost;
                byte[] ack = Apply(item);
                if (ack == null) continue;
                if (acks == null) acks = new Dictionary<ClientConnection, List<byte[]>>();
                List<byte[]> list;
                if (!acks.TryGetValue(conn, out list)) acks[conn] = list = new List<byte[]>();
                list.Add(ack);
            }
            if (acks != null)
            {
                foreach (var kv in acks)
                {
                    if (kv.Value.Count == 1) { kv.Key.Send(kv.Value[0]); continue; }
                    int total = 0;
                    foreach (var a in kv.Value) total += a.Length;
                    var joined = new byte[total];
                    int at = 0;
                    foreach (var a in kv.Value) { Buffer.BlockCopy(a, 0, joined, at, a.Length); at += a.Length; }
                    kv.Key.Send(joined);
                }
            }
            long deferred = 0;
            foreach (var conn in active)
            {
                // each request is counted once, the first frame that leaves it for later
                int waiting = conn.Backlog.Count;
                deferred += waiting - Math.Max(0, conn.DeferredFront - conn.TickApplied);
                conn.DeferredFront = waiting;
                conn.TickApplied = 0;
            }
            if (backlogCount > 0)
            {
                Interlocked.Add(ref Counters.Deferred, deferred);
                WorkArrived.Set();
            }
            Frames.TickDone(Stopwatch.GetTimestamp() - start, frameCommands, backlogCount);
            return n;
        }

        public void Dispose()
        {
            stopping = true;
            try { listener.Stop(); } catch (Exception) { }
            List<ClientConnection> open;
            lock (connections) open = new List<ClientConnection>(connections);
            foreach (var c in open) c.Close();
        }
    }
}
