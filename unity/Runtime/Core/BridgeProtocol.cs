// The bridge wire format (see mateperf/bridge/protocol.py, which this mirrors): newline-delimited
// UTF-8 JSON, Desktop-Mate compatible, plus request ids, batch and completion acks.
using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;
using System.Text;
using Newtonsoft.Json;
using Newtonsoft.Json.Linq;

namespace MatePerf.Bridge
{
    public sealed class ProtocolException : Exception
    {
        public JToken RequestId;
        public string Command;
        public ProtocolException(string message) : base(message) { }
    }

    public sealed class Request
    {
        public JToken Id;        // null for a request without an id (legacy / fire-and-forget)
        public string Command;
        public JObject Data;
    }

    public static class BridgeProtocol
    {
        public const int ProtocolVersion = 2;
        /// package.json's version, reported by the identity query (a test keeps the two equal).
        public const string PackageVersion = "0.2.0";
        public const int DefaultMaxLineBytes = 1 << 20;
        public const int MaxBatchCommands = 1000;

        enum Kind { Number, String, Bool, List }

        sealed class FieldSpec
        {
            public string Name; public Kind Kind; public bool Required = true;
            public double? Low, High;
        }

        static FieldSpec F(string name, Kind kind, bool required = true, double? low = null, double? high = null)
        {
            return new FieldSpec { Name = name, Kind = kind, Required = required, Low = low, High = high };
        }

        static readonly Dictionary<string, FieldSpec[]> Commands = new Dictionary<string, FieldSpec[]>
        {
            ["load_model"] = new[] { F("path", Kind.String, required: false) },
            ["unload_model"] = new FieldSpec[0],
            ["set_expression"] = new[] { F("name", Kind.String, low: 1), F("value", Kind.Number, low: 0, high: 1) },
            ["reset_expressions"] = new FieldSpec[0],
            ["set_transition_speed"] = new[] { F("speed", Kind.Number, low: 0) },
            ["set_auto_blink"] = new[] { F("enabled", Kind.Bool) },
            ["set_auto_head_movement"] = new[]
            {
                F("enabled", Kind.Bool),
                F("min_interval", Kind.Number, required: false, low: 0),
                F("max_interval", Kind.Number, required: false, low: 0),
                F("max_angle", Kind.Number, required: false, low: 0, high: 180),
            },
            ["echo"] = new[] { F("payload", Kind.String) },
            ["batch"] = new[] { F("commands", Kind.List) },
            ["stats"] = new FieldSpec[0],
            ["frame_stats"] = new[] { F("reset", Kind.Bool, required: false) },
            ["identity"] = new FieldSpec[0],
        };

        /// Commands that answer with data instead of changing the avatar; never counted.
        public static bool IsQuery(string command)
        {
            return command == "stats" || command == "frame_stats" || command == "identity";
        }

        static string JsonTypeName(JToken v)
        {
            switch (v.Type)
            {
                case JTokenType.Integer: return "int";
                case JTokenType.Float: return "float";
                case JTokenType.String: return "str";
                case JTokenType.Boolean: return "bool";
                case JTokenType.Array: return "list";
                case JTokenType.Object: return "dict";
                case JTokenType.Null: return "NoneType";
                default: return v.Type.ToString();
            }
        }

        static string KindName(Kind k)
        {
            return k == Kind.Number ? "number" : k == Kind.String ? "string" : k == Kind.Bool ? "bool" : "list";
        }

        /// A number as the Python peer writes it, whatever the current culture (a German locale
        /// would otherwise write 0,5): integers without a point, floats shortest round-trip.
        public static string Number(double x)
        {
            if (x == Math.Floor(x) && Math.Abs(x) < 1e15) return ((long)x).ToString(CultureInfo.InvariantCulture);
            return x.ToString("R", CultureInfo.InvariantCulture);
        }

        static string Number(JToken v)
        {
            if (v.Type == JTokenType.Integer) return v.ToString(Formatting.None);
            string text = Number(v.Value<double>());
            return text.IndexOfAny(new[] { '.', 'E', 'N', 'I' }) < 0 ? text + ".0" : text;
        }

        static void Check(string command, FieldSpec f, JToken v)
        {
            string where = command + "." + f.Name;
            bool ok;
            switch (f.Kind)
            {
                case Kind.Number: ok = v.Type == JTokenType.Integer || v.Type == JTokenType.Float; break;
                case Kind.String: ok = v.Type == JTokenType.String; break;
                case Kind.Bool: ok = v.Type == JTokenType.Boolean; break;
                default: ok = v.Type == JTokenType.Array; break;
            }
            if (!ok) throw new ProtocolException(where + ": expected " + KindName(f.Kind) + ", got " + JsonTypeName(v));
            if (f.Kind == Kind.Number)
            {
                double x = v.Value<double>();
                if (f.Low.HasValue && x < f.Low.Value) throw new ProtocolException(where + ": " + Number(v) + " is below " + Number(f.Low.Value));
                if (f.High.HasValue && x > f.High.Value) throw new ProtocolException(where + ": " + Number(v) + " is above " + Number(f.High.Value));
            }
            if (f.Kind == Kind.String && f.Low.HasValue && ((string)v).Length < f.Low.Value)
                throw new ProtocolException(where + ": must not be empty");
        }

        /// Check one command's name, fields and types; return its data ({} when absent). A legacy
        /// peer knows no query: the companion's own bridge has none (stats, frame_stats, identity).
        public static JObject ValidateCommand(JToken command, JToken data, bool insideBatch = false, bool legacy = false)
        {
            if (command == null || command.Type != JTokenType.String)
                throw new ProtocolException("command: expected string, got " + (command == null ? "NoneType" : JsonTypeName(command)));
            string name = (string)command;
            FieldSpec[] spec;
            if (!Commands.TryGetValue(name, out spec) || (legacy && IsQuery(name)))
                throw new ProtocolException("unknown command '" + name + "'");
            if (name == "batch" && insideBatch) throw new ProtocolException("batch: batches do not nest");
            if (data == null || data.Type == JTokenType.Null) data = new JObject();
            if (data.Type != JTokenType.Object)
                throw new ProtocolException(name + ".data: expected object, got " + JsonTypeName(data));
            var obj = (JObject)data;
            foreach (var f in spec)
            {
                JToken v;
                if (obj.TryGetValue(f.Name, out v)) Check(name, f, v);
                else if (f.Required) throw new ProtocolException(name + "." + f.Name + ": missing");
            }
            if (name == "set_auto_head_movement")
            {
                JToken lo, hi;
                if (obj.TryGetValue("min_interval", out lo) && obj.TryGetValue("max_interval", out hi)
                    && lo.Value<double>() > hi.Value<double>())
                    throw new ProtocolException("set_auto_head_movement: min_interval is above max_interval");
            }
            if (name == "batch")
            {
                var subs = (JArray)obj["commands"];
                if (subs.Count == 0) throw new ProtocolException("batch.commands: must not be empty");
                if (subs.Count > MaxBatchCommands)
                    throw new ProtocolException("batch.commands: more than " + MaxBatchCommands.ToString(CultureInfo.InvariantCulture) + " commands");
                for (int i = 0; i < subs.Count; i++)
                {
                    var sub = subs[i] as JObject;
                    string at = "batch.commands[" + i.ToString(CultureInfo.InvariantCulture) + "]: ";
                    if (sub == null) throw new ProtocolException(at + "expected object");
                    var subCommand = sub["command"];
                    if (subCommand != null && subCommand.Type == JTokenType.String && IsQuery((string)subCommand))
                        throw new ProtocolException(at + (string)subCommand + " cannot be batched");
                    try { ValidateCommand(subCommand, sub["data"], true, legacy); }
                    catch (ProtocolException e) { throw new ProtocolException(at + e.Message); }
                }
            }
            return obj;
        }

        static readonly UTF8Encoding StrictUtf8 = new UTF8Encoding(false, true);

        public static Request DecodeRequest(byte[] buffer, int offset, int count, bool legacy = false)
        {
            JToken msg;
            try
            {
                string text = StrictUtf8.GetString(buffer, offset, count);
                using (var reader = new JsonTextReader(new StringReader(text)))
                {
                    reader.DateParseHandling = DateParseHandling.None;
                    msg = JToken.ReadFrom(reader);
                    if (reader.Read()) throw new JsonReaderException("extra data after the JSON value");
                }
            }
            catch (Exception e) when (e is JsonException || e is ArgumentException || e is DecoderFallbackException)
            {
                throw new ProtocolException("malformed JSON: " + e.Message);
            }
            var obj = msg as JObject;
            if (obj == null) throw new ProtocolException("request: expected object, got " + JsonTypeName(msg));
            JToken id = obj["id"];
            if (id != null && id.Type == JTokenType.Null) id = null;
            if (id != null && id.Type != JTokenType.Integer && id.Type != JTokenType.String)
                throw new ProtocolException("id: expected integer or string");
            JToken command = obj["command"];
            try
            {
                var data = ValidateCommand(command, obj["data"], false, legacy);
                return new Request { Id = id, Command = (string)command, Data = data };
            }
            catch (ProtocolException e)
            {
                e.RequestId = id;
                e.Command = command != null && command.Type == JTokenType.String ? (string)command : null;
                throw;
            }
        }

        public static JObject Response(string command, string status, string message, JToken id, bool legacy)
        {
            var r = new JObject
            {
                ["type"] = "response",
                ["command"] = command,
                ["status"] = status,
                ["message"] = message,
            };
            if (!legacy) r["id"] = id == null ? JValue.CreateNull() : id.DeepClone();
            return r;
        }

        public static JObject Greeting(bool legacy)
        {
            var g = new JObject { ["type"] = "response", ["status"] = "connected", ["message"] = "mateperf-csharp bridge ready" };
            if (!legacy) g["protocol"] = ProtocolVersion;
            return g;
        }

        public static byte[] Encode(JObject message)
        {
            return Encoding.UTF8.GetBytes(message.ToString(Formatting.None) + "\n");
        }

        /// A completion ack, written directly: the same fields in the same order as
        /// Encode(Response(...)) plus frame and peer times, without building a JObject, which
        /// costs the main thread several µs per command under Mono. `command` is a validated
        /// name (no escaping needed); `idJson` the request id as JSON ("null" when absent);
        /// `count` < 0 leaves the count out. `text` is the caller's reusable buffer.
        public static byte[] EncodeAck(StringBuilder text, string command, string idJson, int count,
                                       long frame, long recvNs, long applyNs)
        {
            var inv = CultureInfo.InvariantCulture;
            text.Length = 0;
            text.Append("{\"type\":\"response\",\"command\":\"").Append(command)
                .Append("\",\"status\":\"success\",\"message\":\"applied\",\"id\":").Append(idJson);
            if (count >= 0) text.Append(",\"count\":").Append(count.ToString(inv));
            text.Append(",\"frame\":").Append(frame.ToString(inv))
                .Append(",\"recv_ns\":").Append(recvNs.ToString(inv))
                .Append(",\"apply_ns\":").Append(applyNs.ToString(inv)).Append("}\n");
            return Encoding.UTF8.GetBytes(text.ToString());
        }
    }

    /// Splits a byte stream into lines; a null entry marks one line over the limit, reported as
    /// soon as the limit is crossed (the rest of that line is discarded).
    public sealed class LineBuffer
    {
        readonly int maxLineBytes;
        byte[] buf = new byte[4096];
        int len, scan;
        bool discarding;

        public LineBuffer(int maxLineBytes) { this.maxLineBytes = maxLineBytes; }

        public void Feed(byte[] chunk, int count, List<byte[]> output)
        {
            if (len + count > buf.Length)
            {
                int size = buf.Length;
                while (size < len + count) size *= 2;
                Array.Resize(ref buf, size);
            }
            Buffer.BlockCopy(chunk, 0, buf, len, count);
            len += count;
            int start = 0;
            while (true)
            {
                int i = Array.IndexOf(buf, (byte)'\n', Math.Max(start, scan), len - Math.Max(start, scan));
                if (i < 0)
                {
                    if (start > 0) { Buffer.BlockCopy(buf, start, buf, 0, len - start); len -= start; }
                    scan = len;
                    if (len > maxLineBytes)
                    {
                        if (!discarding) { output.Add(null); discarding = true; }
                        len = 0; scan = 0;
                        if (buf.Length > 1 << 16) buf = new byte[4096];
                    }
                    return;
                }
                int lineLen = i - start;
                if (discarding) discarding = false;
                else if (lineLen > maxLineBytes) output.Add(null);
                else
                {
                    var line = new byte[lineLen];
                    Buffer.BlockCopy(buf, start, line, 0, lineLen);
                    output.Add(line);
                }
                start = i + 1;
                scan = start;
            }
        }
    }
}
