// Package client is the Go SDK of imgate: one logged-in device that sends and
// receives messages through an access node, and keeps itself connected.
//
// # Use
//
//	c, err := client.Dial(ctx, client.Config{
//		Dispatcher: "http://127.0.0.1:8080",
//		UID:        "alice",
//		Device:     "phone",
//		Logger:     logger, // optional zerolog.Logger; the zero value is silent
//	})
//	if err != nil { ... }        // *DispatcherError, *ServerError, or ctx's error
//	defer c.Close()
//
//	res, err := c.Send(ctx, "bob", []byte("hello"))
//	// err == nil: res.Outcome is DELIVERED, PARTIAL, OFFLINE or FAILED (+Reason)
//	// errors.Is(err, client.ErrOutcomeUnknown): may or may not have arrived
//
//	for m := range c.Messages() { ... } // closed when the client stops
//	// c.Events(): connected / disconnected / reconnecting / goaway / kicked
//	// <-c.Done(); c.Err(): why it stopped (ErrClosed, *KickedError, ...)
//
// # What it does on the wire
//
// Dial calls GET <Dispatcher>/v1/endpoint?uid=&device=&transport=tcp
// [&exclude=...], connects to the node it names (TCP, no TCP keep-alive: the
// heartbeat does that job), sends Login with the token and returns after
// LoginAck. Frames are proto/wire's: 4-byte big-endian length, one
// wirepb.Frame. Dispatcher answers other than 2xx become *DispatcherError
// (HTTP status, the JSON error code, Retry-After); an Error frame answering
// Login becomes *ServerError.
//
// With Config.TLS set it asks for transport=tls instead (nodes with a TLS
// listener), runs a TLS handshake on the connection before Login —
// verified with that config; an empty ServerName is the host of the
// address the dispatcher named — and speaks the same frames inside TLS. An
// answer for another transport than the one asked for is refused, and a
// failed handshake is a temporary failure of that node (it is excluded on
// the next try); the client never falls back to plain TCP by itself.
// Closing sends close_notify where a plain connection would shut its write
// side. Plain TCP stays the default:
//
//	c, err := client.Dial(ctx, client.Config{
//		Dispatcher: "https://im.example.com", UID: "alice", Device: "phone",
//		TLS:        &tls.Config{MinVersion: tls.VersionTLS12}, // system roots
//	})
//
// Each connection has one reader and one writer goroutine. The writer
// batches queued frames into one write and sends a Ping every
// LoginAck.heartbeat_interval_ms (else the dispatcher's hint, else
// Config.HeartbeatInterval, 30 s). The reader declares the connection dead
// when nothing, not even a Pong, arrived for 2 × heartbeat + 5 s. If the
// node gives an idle timeout but no interval, the client Pings at a third
// of the idle timeout when its default would be too slow.
//
// # Guarantees
//
// Send: every call returns. A SendAck with a known outcome is a nil error.
// Errors for which errors.Is(err, ErrOutcomeUnknown) holds mean the message
// may or may not have been delivered: the connection closed before the
// SendAck (ErrConnectionLost), no SendAck within SendAckTimeout
// (ErrSendAckTimeout; by default the node's LoginAck.deliver_timeout_ms +
// 15 s, else 25 s), ctx ended after the Send was queued, or an outcome value
// this client does not know. The SDK never re-sends by itself. A Send that
// was never queued (its connection died first) waits for the next
// connection instead. Payloads above max_frame_bytes − 1024 are refused
// locally (wire.ErrFrameTooLarge), so that the Deliver the node builds still
// fits. At most MaxPending (256) Sends await their SendAck at once.
//
// Receive: each Deliver is handed to Messages once and then ACKed, also one
// that arrives before LoginAck (the node may send it in a race). The node
// re-sends until it sees the ACK, so the client remembers the last DedupSize
// (4096) msg ids across reconnects; a re-sent copy is ACKed again and
// dropped. When Messages is full, a Deliver is dropped without an ACK so the
// node re-sends it later. The reader never waits for the application,
// because it must keep reading SendAcks, Pongs and Kicks.
//
// Reconnect: when a connection drops (EOF, heartbeat lost, a fatal Error,
// Kick with any reason but REPLACED), the client waits one backoff step and
// asks the dispatcher again with exclude=<the failed node>. Backoff is
// base·factor^n capped at max, ± jitter. It uses the dispatcher's reconnect
// hints when sent, else Config.Backoff (500 ms, ×2, ±20 %, 30 s). A
// Retry-After is never undercut. A dispatcher answer of no_node drops the
// exclude list, so a one-node fleet comes back. Permanent failures (400, 401,
// a Login refused for what the client sent) stop the client.
//
// GoAway: after reconnect_after_ms the client holds new Sends until the old
// connection's outstanding SendAcks are in (or DrainTimeout, by default the
// SendAck timeout, passes), because the new login replaces the old session;
// then it connects elsewhere (excluding the node) and sends the held ones
// there. The old connection keeps reading, ACKing and pinging until it has
// nothing outstanding, then the client closes it.
// A Kick REPLACED on that old connection is taken for the effect of its own
// new login, not as the end of the client.
//
// Close is graceful: no new Deliver is handed over, queued frames (the
// DeliverAcks of messages already handed over) are written, the write side
// is shut, and the client reads until the node closes its side (at most
// about a second). Closing with unread input would send a TCP reset, and the
// node could lose those last ACKs. The old connection after GoAway is
// closed the same way.
//
// Kick REPLACED on the current connection (the same uid and device logged
// in elsewhere), and Kick ADMIN with ban (the backend keeps the user out,
// KickedError.Banned), stop the client for good: no reconnect, Done is
// closed, Err is the *KickedError. The app reconnects, when it decides to,
// with a new Client.
//
// Compatibility: unknown frame types (and empty frames) from the node are
// skipped; unknown fields are ignored by protobuf; a Kick with an unknown
// reason reconnects like ADMIN; a fatal Error with an unknown code is a
// temporary failure. Frames from the node may be max_frame_bytes + 64 long.
//
// Testing: package clienttest runs fake nodes and a fake dispatcher on
// loopback, for tests of this package and of code built on it.
//
// # Rooms
//
// Join and Leave make the connection a member of a room or take it out
// (protocol §13) and return once the node answered: nil, or a *RoomError
// (the node's --room-join policy or the app's backend refused, too many
// rooms, rate limited — RoomError.Temporary). Bad ids are refused locally
// (ErrBadRoom). Publish is a Send to a room: the same guarantees, its
// SendResult with Room, Nodes (the nodes holding members it reached) and
// Devices (member connections, the publisher's own never); a broadcast
// room answers OUTCOME_SENT with Acked 0.
//
//	if err := c.Join(ctx, "team-42"); err != nil { ... }
//	res, err := c.Publish(ctx, "team-42", []byte("hi all"))
//	// a member's Message has Room "team-42"; Broadcast for a live room
//
// Membership belongs to a connection, so the client keeps the set its
// connection is in (Rooms; changed only by the node's RoomState frames, the
// backend's joins and removals included — EventRoom with ByBackend) and
// joins each room again on every new connection, after a drop or a GoAway
// move, before any Send, Publish or Join uses it. A rejoin refused for good
// leaves the set with an EventRoom carrying the *RoomError; one refused for
// a while (rate limit, backend unreachable) is tried again with backoff
// until the SendAck timeout. Join and Leave are idempotent: one whose
// connection is lost before the answer is made again on the next one.
//
// Room messages are ACKed and de-duplicated like one-to-one ones, except a
// broadcast room's (Message.Broadcast): the node sends it once and expects
// no ACK, so none is sent, and one that finds Messages full is lost to this
// client (counted in DroppedBroadcast).
//
// # Never
//
// The client never reconnects after Kick REPLACED or a ban and never blocks its
// reader on the application. It never logs tokens or payloads, and it keeps
// no goroutine after Close returns.
package client
