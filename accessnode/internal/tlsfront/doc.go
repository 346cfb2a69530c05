// Package tlsfront terminates TLS for the access node's clients and hands
// the plaintext byte stream to the connection layer (evloop), so the
// protocol (gateway) serves TLS clients exactly like plain TCP ones.
//
// Shape, for one connection:
//
//	client ──TLS/TCP── tls.Conn ─┬─ up:   Read  → Write ─┐
//	                             └─ down: Write ← Read  ─┴─ socketpair ── evloop Conn (gateway)
//
// In more detail:
//
//   - A Front accepts on its own listener (Serve) or is handed connections
//     (Handle). The handshake runs under a deadline (HandshakeTimeout), so a
//     client that connects and never finishes it is closed; at most
//     MaxHandshakes run at once, more wait in the listen backlog.
//   - With Config.Proxy on, a PROXY header is read before the ClientHello,
//     under the same deadline (proxy.go); the client it names is the
//     connection's address from then on.
//   - After the handshake it makes a unix socketpair, gives one end to the
//     engine (Adopter.Adopt) with the client's real address — the engine's
//     connection cap and the gateway's per-address limits, login deadline
//     and idle timeout apply as for TCP — and pumps bytes between the other
//     end and the tls.Conn with two goroutines.
//   - Closing mirrors the engine's: when the node shuts its side (after a
//     fatal Error, a Kick, GoAway handling) the front flushes, sends
//     close_notify and a FIN, and waits up to Linger for the client to close
//     before it drops the TCP connection; when the client closes, the node
//     reads EOF. A client that accepts no bytes for WriteTimeout while the
//     node has some for it is closed.
//   - The certificate comes from tlsconf: its files are re-read when they
//     change, so a renewal reaches new connections without a restart while
//     established ones keep their session.
//
// This costs far more memory than a plain TCP connection (two goroutines,
// the tls.Conn and two more sockets per connection; see docs/benchmarks.md).
// The package never blocks an engine loop: the engine only ever sees its
// end of the socketpair.
package tlsfront
