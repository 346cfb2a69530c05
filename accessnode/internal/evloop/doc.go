// Package evloop is the access node's connection layer: readiness-based I/O
// over Linux epoll for many long-lived, mostly idle TCP connections.
//
// Why not a goroutine per connection: a parked goroutine with its stack and a
// read buffer costs 4–8 KiB per connection; the node's goal is ≤ 2 KiB per
// idle logged-in connection (see docs/architecture.md for the measurements).
// Here an idle connection is a small Conn struct in its loop's slot table and
// nothing else: no goroutine, no timer, no buffer.
//
// Shape:
//   - An Engine runs N loops (one per core by default). Each loop owns one
//     epoll instance, the listener (registered with EPOLLEXCLUSIVE in every
//     loop, so each loop accepts for itself), an eventfd to be woken, and a
//     slot table of its connections. Everything in the slot table is owned by
//     the loop goroutine.
//   - Reads happen in the loop into one buffer shared by the loop; only a
//     frame that arrives in pieces borrows a pooled buffer, returned as soon as
//     the frame is complete. Whole frames are handed to the Handler in the loop
//     goroutine and must not be retained after OnFrame returns.
//   - Writes may come from any goroutine (Conn.Write). A write is gathered
//     in a pooled buffer and the conn listed with its loop, which hands all
//     of a conn's gathered bytes to the kernel in one write(2) before it next
//     sleeps (a loop that sleeps is woken for it). The replies to one read,
//     or the Delivers of one batch from another node, so cost one system
//     call per connection instead of one per frame. What the kernel does not
//     take waits for EPOLLOUT; a connection whose queue exceeds the limit is
//     closed: one slow reader never grows memory or slows anyone else.
//   - There is no timer per connection. Each Tick a loop calls
//     Handler.OnTick for its hot connections (new ones waiting for a login,
//     ones with a re-send due, lingering ones) and for a slice of its slot
//     table, so that every connection is ticked once per IdleSweep (the
//     node's --idle-sweep, 5 s) rather than every Tick: at 500,000 idle
//     connections the whole-table pass was a large share of a fleet's idle
//     CPU. Conn.Hot (any goroutine) puts a conn in the hot list.
//   - A fatal close flushes what is queued, shuts down the write side and
//     lingers briefly discarding input, so the peer reads the last frame
//     (usually an Error) instead of a reset.
//   - Engine.Adopt takes a connected socket from elsewhere (the TLS front's
//     end of a socketpair) with the real client's address, and serves it
//     like an accepted connection, under the same MaxConns.
//   - A listener (Engine.ServeWS) or adopted socket (Engine.AdoptWS) may
//     speak WebSocket instead of the length prefix: the loop answers the
//     handshake and parses frame headers from its own buffer (ws.go,
//     ws_loop.go), and Conn.Write turns each length-prefixed frame into one
//     binary message, so the Handler sees the same frames either way.
//   - With Config.Proxy on, a listener's connection starts unopened: its
//     first bytes gather like an incomplete frame until a PROXY header is
//     read (proxy.go, accessnode/internal/proxyhdr); then its address is the
//     client's and OnOpen runs. The handler never sees the balancer.
//
// The package knows the framing (proto/wire, and WebSocket) but not what
// frames mean; it never blocks its loop on anything but epoll_wait.
package evloop
