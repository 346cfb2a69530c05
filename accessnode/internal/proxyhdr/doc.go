// Package proxyhdr reads the PROXY protocol header (versions 1 and 2, as
// HAProxy specifies them) that an L4 balancer — HAProxy, nginx stream, LVS
// with a proxy, a cloud NLB — writes before a client's first byte, so the
// node's per-address limits, logs and metrics see the client and not the
// balancer.
//
// It is built for the event loop: Parse works on the bytes a connection has
// delivered so far and says "a whole header of n bytes", "not a header" or
// "wait for more"; it never reads a socket and never blocks. Which bytes
// form the header (the v1 line, the v2 length) is decided here; what they
// mean is parsed by github.com/pires/go-proxyproto over those bytes in
// memory.
//
// Config.Decide is the policy every client listener shares (evloop's TCP
// and WebSocket listeners, the TLS front): the mode (off, optional,
// required), the trusted source ranges, and why a connection is refused,
// counted in Counters by Reason. A header is only believed from a trusted
// source: from anyone else it is refused, in either mode, since honouring
// it would let any client choose the address its limits are counted
// against.
//
// The package must never hold a connection's bytes beyond a call, and
// never let an untrusted peer set the address a connection is served as.
package proxyhdr
