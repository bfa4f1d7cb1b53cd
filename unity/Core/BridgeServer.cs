// The Unity side of the bridge without UnityEngine: socket threads read, validate and queue;
// Tick(), called once per frame on the main thread, drains the queue, applies each command to
// the avatar and then acks it. Bad input is answered from the socket thread and never queued.
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

        public JObject ToJson()
        {
            return new JObject
            {
                ["received"] = Interlocked.Read(ref Received),
                ["applied"] = Interlocked.Read(ref Applied),
                ["applied_commands"] = Interlocked.Read(ref AppliedCommands),
                ["rejected"] = Interlocked.Read(ref Rejected),
                ["connections"] = Interlocked.Read(ref Connections),
            };
        }
    }

    sealed class ClientConnection
    {
        public readonly Socket Socket;
        public readonly object SendLock = new object();
        public readonly HashSet<string> SeenIds = new HashSet<string>();
        public volatile bool Open = true;

        public ClientConnection(Socket socket) { Socket = socket; }

        public void Send(byte[] payload)
        {
            if (!Open) return;
            try
            {
                lock (SendLock)
                {
                    int sent = 0;
                    while (sent < payload.Length) sent += Socket.Send(payload, sent, payload.Length - sent, SocketFlags.None);
                }
            }
            catch (Exception e) when (e is SocketException || e is ObjectDisposedException || e is IOException)
            {
                Open = false;
            }
        }
    }

    struct QueuedRequest
    {
        public ClientConnection Connection;
        public Request Request;
        public long RecvNs;
    }

    public sealed class BridgeServer : IDisposable
    {
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

        /// Set whenever a request is queued, so an unpaced host can sleep until there is work.
        public readonly AutoResetEvent WorkArrived = new AutoResetEvent(false);

        readonly IAvatar avatar;
        readonly TcpListener listener;
        readonly ConcurrentQueue<QueuedRequest> queue = new ConcurrentQueue<QueuedRequest>();
        readonly List<ClientConnection> connections = new List<ClientConnection>();
        volatile bool stopping;

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

        /// CLOCK_MONOTONIC nanoseconds on Linux (Mono's Stopwatch), comparable with Python's
        /// time.perf_counter_ns() on the same host.
        public static long NowNs()
        {
            long ticks = Stopwatch.GetTimestamp();
            if (Stopwatch.Frequency == 1000000000L) return ticks;
            if (1000000000L % Stopwatch.Frequency == 0) return ticks * (1000000000L / Stopwatch.Frequency);
            return (long)(ticks * (1e9 / Stopwatch.Frequency));
        }

        public void Start()
        {
            // a restarted peer must rebind its port while old connections sit in TIME_WAIT
            listener.Server.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            listener.Start();
            Port = ((IPEndPoint)listener.LocalEndpoint).Port;
            new Thread(AcceptLoop) { IsBackground = true, Name = "bridge-accept" }.Start();
        }

        void AcceptLoop()
        {
            while (!stopping)
            {
                Socket socket;
                try { socket = listener.AcceptSocket(); }
                catch (Exception) { if (stopping) return; continue; }
                socket.NoDelay = true;
                var conn = new ClientConnection(socket);
                lock (connections) connections.Add(conn);
                Interlocked.Increment(ref Counters.Connections);
                conn.Send(BridgeProtocol.Encode(BridgeProtocol.Greeting(Legacy)));
                new Thread(() => ReadLoop(conn)) { IsBackground = true, Name = "bridge-read" }.Start();
            }
        }

        void ReadLoop(ClientConnection conn)
        {
            var lines = new LineBuffer(MaxLineBytes);
            var chunk = new byte[1 << 16];
            var ready = new List<byte[]>();
            try
            {
                while (!stopping)
                {
                    int n = conn.Socket.Receive(chunk);
                    if (n <= 0) break;
                    long recvNs = NowNs();
                    ready.Clear();
                    lines.Feed(chunk, n, ready);
                    foreach (var line in ready) HandleLine(conn, line, recvNs);
                }
            }
            catch (Exception e) when (e is SocketException || e is ObjectDisposedException || e is IOException) { }
            finally
            {
                conn.Open = false;
                try { conn.Socket.Close(); } catch (Exception) { }
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
                Reject(conn, "line exceeds " + MaxLineBytes + " bytes", null, null);
                return;
            }
            bool blank = true;
            foreach (var b in line) if (b != ' ' && b != '\t' && b != '\r') { blank = false; break; }
            if (blank) return;
            Request request;
            try { request = BridgeProtocol.DecodeRequest(line, 0, line.Length); }
            catch (ProtocolException e)
            {
                Interlocked.Increment(ref Counters.Received);
                Reject(conn, e.Message, e.RequestId, e.Command);
                return;
            }
            bool query = BridgeProtocol.IsQuery(request.Command);
            if (!query) Interlocked.Increment(ref Counters.Received);
            if (request.Id != null)
            {
                string key = request.Id.ToString(Newtonsoft.Json.Formatting.None);
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
            queue.Enqueue(new QueuedRequest { Connection = conn, Request = request, RecvNs = recvNs });
            WorkArrived.Set();
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

        byte[] Apply(QueuedRequest item)
        {
            var request = item.Request;
            JObject reply;
            if (request.Command == "stats")
            {
                reply = BridgeProtocol.Response("stats", "success", "applied", request.Id, Legacy);
                reply["data"] = new JObject { ["counters"] = Counters.ToJson(), ["state"] = avatar.Snapshot() };
            }
            else if (request.Command == "batch")
            {
                var subs = (JArray)request.Data["commands"];
                foreach (JObject sub in subs)
                    ApplyOne((string)sub["command"], sub["data"] as JObject ?? new JObject());
                Interlocked.Increment(ref Counters.Applied);
                Interlocked.Add(ref Counters.AppliedCommands, subs.Count);
                reply = BridgeProtocol.Response("batch", "success", "applied", request.Id, Legacy);
                if (!Legacy) reply["count"] = subs.Count;
            }
            else
            {
                ApplyOne(request.Command, request.Data);
                Interlocked.Increment(ref Counters.Applied);
                Interlocked.Increment(ref Counters.AppliedCommands);
                if (Legacy && LegacyEarlyAck.Contains(request.Command)) return null;
                reply = BridgeProtocol.Response(request.Command, "success", "applied", request.Id, Legacy);
            }
            if (!Legacy)
            {
                reply["frame"] = Frame;
                reply["recv_ns"] = item.RecvNs;
                reply["apply_ns"] = NowNs();
            }
            return BridgeProtocol.Encode(reply);
        }

        /// One frame, on the main thread: drain the queue, apply, ack. Returns how many were applied.
        public int Tick()
        {
            Frame++;
            Dictionary<ClientConnection, List<byte[]>> acks = null;
            int n = 0;
            QueuedRequest item;
            while (queue.TryDequeue(out item))
            {
                n++;
                byte[] ack = Apply(item);
                if (ack == null) continue;
                if (acks == null) acks = new Dictionary<ClientConnection, List<byte[]>>();
                List<byte[]> list;
                if (!acks.TryGetValue(item.Connection, out list)) acks[item.Connection] = list = new List<byte[]>();
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
            return n;
        }

        public void Dispose()
        {
            stopping = true;
            try { listener.Stop(); } catch (Exception) { }
            lock (connections)
            {
                foreach (var c in connections)
                {
                    c.Open = false;
                    try { c.Socket.Shutdown(SocketShutdown.Both); } catch (Exception) { }
                    try { c.Socket.Close(); } catch (Exception) { }
                }
            }
        }
    }
}
