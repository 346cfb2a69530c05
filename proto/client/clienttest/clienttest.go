// Package clienttest runs a fake imgate cluster in-process for tests of code
// that uses package client: fake access nodes that speak the client wire
// protocol (proto/wire) on real loopback sockets, and a fake dispatcher
// (httptest) that hands out their addresses.
//
// It is NOT the access node and must never be used as one: one goroutine per
// connection, no limits, no real tokens (a token is "tok:<node>:<uid>:<device>"),
// presence is a map shared by the nodes of one Cluster. What it does follow is
// the protocol as the node promises it: Login first (LoginAck, or Error
// fatal then close), Ping→Pong, exactly one SendAck per Send (DELIVERED,
// PARTIAL, OFFLINE or FAILED), Deliver re-sent by hand with Session.Deliver,
// and the node-initiated GoAway, Kick and drop that tests need to provoke.
package clienttest

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgate/imgate/proto/api"
)

// Cluster is a fake dispatcher plus fake nodes sharing one presence map.
type Cluster struct {
	Dispatcher *Dispatcher
	hub        *hub
	nodes      []*Node
}

// Start starts one node per id and a dispatcher that knows them, all closed
// by t.Cleanup.
func Start(t testing.TB, nodeIDs ...string) *Cluster {
	t.Helper()
	cl := &Cluster{hub: newHub()}
	for _, id := range nodeIDs {
		n, err := newNode(id, cl.hub, t.Logf)
		if err != nil {
			t.Fatalf("clienttest: node %s: %v", id, err)
		}
		cl.nodes = append(cl.nodes, n)
	}
	cl.Dispatcher = newDispatcher(cl)
	t.Cleanup(cl.Close)
	return cl
}

// Node returns the node with this id, nil if there is none.
func (cl *Cluster) Node(id string) *Node {
	for _, n := range cl.nodes {
		if n.ID == id {
			return n
		}
	}
	return nil
}

// URL is the dispatcher's base URL.
func (cl *Cluster) URL() string { return cl.Dispatcher.URL }

// Close stops the dispatcher and every node and waits for their goroutines.
func (cl *Cluster) Close() {
	cl.Dispatcher.Close()
	for _, n := range cl.nodes {
		n.Close()
	}
}

// Request is one GET /v1/endpoint the dispatcher answered.
type Request struct {
	UID, Device string
	Exclude     []string
	Status      int
	NodeID      string // the node handed out, "" on errors
}

// Failure makes the dispatcher answer with an error.
type Failure struct {
	Status     int
	Code       string // api.Code*; "" sends a non-JSON body
	Message    string
	RetryAfter string // the Retry-After header, "" for none
}

// Dispatcher is the fake GET /v1/endpoint. It hands out the first node (in
// Start order) that is not excluded and not marked down; when none is left it
// answers 503 no_node.
type Dispatcher struct {
	*httptest.Server
	cl *Cluster

	mu       sync.Mutex
	requests []Request
	failures []Failure // answered first, one per request
	down     map[string]bool
	hints    *api.BackoffHints
	hbMS     int64
}

func newDispatcher(cl *Cluster) *Dispatcher {
	d := &Dispatcher{
		cl:    cl,
		down:  map[string]bool{},
		hints: &api.BackoffHints{BaseMS: 10, Factor: 2, Jitter: 0.2, MaxMS: 200},
	}
	d.Server = httptest.NewServer(http.HandlerFunc(d.serve))
	return d
}

// Fail queues failures: the next len(f) requests get them, in order.
func (d *Dispatcher) Fail(f ...Failure) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failures = append(d.failures, f...)
}

// SetDown keeps node id out of (or back in) the answers.
func (d *Dispatcher) SetDown(id string, down bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.down[id] = down
}

// SetHints sets the reconnect hints (nil: none) and heartbeat hint (0: none)
// in the answers. The default is a fast schedule: base 10 ms, max 200 ms.
func (d *Dispatcher) SetHints(h *api.BackoffHints, heartbeatMS int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.hints, d.hbMS = h, heartbeatMS
}

// Requests returns a copy of the requests answered so far.
func (d *Dispatcher) Requests() []Request {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.requests)
}

func (d *Dispatcher) serve(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/endpoint" && r.URL.Path != "/get-tcp-ip" {
		writeErr(w, Failure{Status: 404, Code: api.CodeNotFound, Message: "no such path"})
		return
	}
	q := r.URL.Query()
	req := Request{UID: q.Get("uid"), Device: q.Get("device")}
	if ex := q.Get("exclude"); ex != "" {
		req.Exclude = strings.Split(ex, ",")
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	answer := func(status int, node string) {
		req.Status, req.NodeID = status, node
		d.requests = append(d.requests, req)
	}
	if len(d.failures) > 0 {
		f := d.failures[0]
		d.failures = d.failures[1:]
		answer(f.Status, "")
		writeErr(w, f)
		return
	}
	if req.UID == "" || req.Device == "" {
		answer(400, "")
		writeErr(w, Failure{Status: 400, Code: api.CodeBadParameter, Message: "uid and device are required"})
		return
	}
	for _, n := range d.cl.nodes {
		if d.down[n.ID] || slices.Contains(req.Exclude, n.ID) {
			continue
		}
		answer(200, n.ID)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(api.EndpointResponse{
			NodeID:              n.ID,
			Addr:                n.Addr(),
			Transport:           "tcp",
			Token:               Token(n.ID, req.UID, req.Device),
			ExpiresAt:           time.Now().Add(time.Minute),
			HeartbeatIntervalMS: d.hbMS,
			Reconnect:           d.hints,
		})
		return
	}
	answer(503, "")
	writeErr(w, Failure{Status: 503, Code: api.CodeNoNode, Message: "no eligible node"})
}

func writeErr(w http.ResponseWriter, f Failure) {
	if f.RetryAfter != "" {
		w.Header().Set("Retry-After", f.RetryAfter)
	}
	if f.Code == "" {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(f.Status)
		fmt.Fprintln(w, f.Message)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(f.Status)
	json.NewEncoder(w).Encode(api.ErrorResponse{Error: api.ErrorBody{Code: f.Code, Message: f.Message}})
}

// Token is the fake token the dispatcher hands out and the nodes check.
func Token(node, uid, device string) string {
	return "tok:" + node + ":" + uid + ":" + device
}

// listen is net.Listen on a free loopback port.
func listen() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") }
