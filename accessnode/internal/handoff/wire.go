//go:build linux

// Package handoff upgrades an access node in place: the running process
// starts the new binary and hands it, over a unix socket, its listening
// sockets and then every client connection's socket (SCM_RIGHTS, in
// batches) with the connection's state, so that no client sees its TCP
// connection end. If the new process does not come up, answer or take
// everything within the deadline, the old one keeps or takes back
// everything. The protocol and every failure are in docs/architecture.md,
// "Upgrading a node in place"; the trigger (SIGUSR2) in docs/operations.md.
package handoff

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/imgate/imgate/accessnode/internal/gateway"
)

// Message types, in the order they are sent (new → old: hello, ready,
// adopted, tookover; old → new: listeners, conns…, done, commit or abort).
const (
	msgHello     = "hello"     // new: I run (pid, version)
	msgListeners = "listeners" // old: the listening sockets, one fd per name
	msgReady     = "ready"     // new: built and healthy; I take connections
	msgConns     = "conns"     // old: a batch of connections, one fd each
	msgDone      = "done"      // old: that was all (count)
	msgAdopted   = "adopted"   // new: I hold all of them (count), untouched
	msgCommit    = "commit"    // old: they are yours; I let go
	msgTookOver  = "tookover"  // new: serving, registered
	msgAbort     = "abort"     // either side: the hand-off is off (error)
)

// message is one frame of the hand-off protocol. Its file descriptors
// travel in the same sendmsg as its first byte; nfds in the header says how
// many belong to it (len(Names) or len(Conns)).
type message struct {
	Type    string       `json:"type"`
	PID     int          `json:"pid,omitempty"`
	Version string       `json:"version,omitempty"`
	Names   []string     `json:"names,omitempty"`
	Conns   []connRecord `json:"conns,omitempty"`
	Count   int          `json:"count,omitempty"`
	Started int64        `json:"started,omitempty"` // listeners: the node's registered start (Unix ms), kept
	// Protocol (hello): the version of this hand-off protocol and of
	// ConnState the new process speaks; the old one hands over only to
	// the same.
	Protocol int    `json:"protocol,omitempty"`
	Error    string `json:"error,omitempty"`
}

// connRecord is one connection of a batch: what its loop kept and what its
// session holds. Its socket is the fd at the same index.
type connRecord struct {
	Remote  string            `json:"remote"`
	WS      uint8             `json:"ws,omitempty"`
	WSState uint32            `json:"ws_state,omitempty"`
	In      []byte            `json:"in,omitempty"`
	Out     []byte            `json:"out,omitempty"`
	IdleNs  int64             `json:"idle_ns,omitempty"`
	AgeNs   int64             `json:"age_ns,omitempty"`
	State   gateway.ConnState `json:"state"`
}

// protocolVersion changes whenever a message or ConnState changes meaning.
const protocolVersion = 1

const (
	headerSize = 6        // 4-byte body length, 2-byte fd count, big-endian
	maxBody    = 64 << 20 // a batch's JSON: 200 connections with full queues fit
	maxFDs     = 250      // per message; the kernel's limit is 253 (SCM_MAX_FD)
)

var errFrame = errors.New("handoff: bad frame")

// appendFrame appends m's frame, declaring nfds descriptors, to b.
func appendFrame(b []byte, m *message, nfds int) ([]byte, error) {
	body, err := json.Marshal(m)
	if err != nil {
		return b, err
	}
	if len(body) > maxBody || nfds > maxFDs || nfds < 0 {
		return b, fmt.Errorf("%w: %d bytes, %d fds", errFrame, len(body), nfds)
	}
	b = binary.BigEndian.AppendUint32(b, uint32(len(body)))
	b = binary.BigEndian.AppendUint16(b, uint16(nfds))
	return append(b, body...), nil
}

// decodeFrame reads one frame from the front of b. n is the bytes it took
// (0: b holds no whole frame yet).
func decodeFrame(b []byte) (m message, nfds, n int, err error) {
	if len(b) < headerSize {
		return m, 0, 0, nil
	}
	size := int(binary.BigEndian.Uint32(b))
	nfds = int(binary.BigEndian.Uint16(b[4:]))
	if size > maxBody || nfds > maxFDs {
		return m, 0, 0, fmt.Errorf("%w: %d bytes, %d fds", errFrame, size, nfds)
	}
	if len(b) < headerSize+size {
		return m, 0, 0, nil
	}
	if err := json.Unmarshal(b[headerSize:headerSize+size], &m); err != nil {
		return m, 0, 0, fmt.Errorf("%w: %v", errFrame, err)
	}
	want := 0
	switch m.Type {
	case msgListeners:
		want = len(m.Names)
	case msgConns:
		want = len(m.Conns)
	case msgHello, msgReady, msgDone, msgAdopted, msgCommit, msgTookOver, msgAbort:
	default:
		return m, 0, 0, fmt.Errorf("%w: type %q", errFrame, m.Type)
	}
	if nfds != want {
		return m, 0, 0, fmt.Errorf("%w: %s with %d fds for %d items", errFrame, m.Type, nfds, want)
	}
	return m, nfds, headerSize + size, nil
}
