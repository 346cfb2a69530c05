// Command loadgen opens many logged-in client connections through the
// dispatcher, exactly as an SDK does (GET /v1/endpoint → TCP connect → Login),
// keeps them alive with heartbeats, and measures what they cost the access
// nodes: RSS and Go heap read from each node's /metrics before and after.
//
// It is bounded: it opens --conns connections at --rate per second, holds
// them for --hold, then closes them and exits. Only loopback targets are
// meant for it here.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/imgate/imgate/proto/api"
	"github.com/imgate/imgate/proto/wire"
	"github.com/imgate/imgate/proto/wirepb"
)

type config struct {
	dispatcher  string
	transport   string // tcp or ws
	conns       int
	rate        int
	hold        time.Duration
	heartbeat   time.Duration
	settle      time.Duration
	metrics     string
	srcIPs      int
	srcBase     netip.Addr
	concurrency int
	jsonOut     string
	// c2c traffic: connection 2k sends to connection 2k+1.
	msgRate       int
	msgPairs      int // 0: every pair
	msgTick       time.Duration
	msgWarmup     time.Duration
	msgDuration   time.Duration
	regionA       string
	regionB       string
	payload       int
	procs         int
	shard         int // >= 0 in a child process started by --procs
	dispMetrics   string
	reconnect     bool
	loginDeadline time.Duration
	idleWindow    time.Duration
	countArrivals bool
	// Room mode (rooms.go).
	room           string
	roomPublishers int
	roomRate       int
}

func main() {
	var c config
	flag.StringVar(&c.dispatcher, "dispatcher", "http://127.0.0.1:8080", "dispatcher base URL")
	flag.StringVar(&c.transport, "transport", "tcp", "tcp, or ws: the same frames over WebSocket (protocol §2.2), one binary message each")
	flag.IntVar(&c.conns, "conns", 1000, "connections to open and log in")
	flag.IntVar(&c.rate, "rate", 2000, "logins started per second")
	flag.DurationVar(&c.hold, "hold", 10*time.Second, "how long to hold the connections after the last login")
	flag.DurationVar(&c.heartbeat, "heartbeat", 30*time.Second, "ping interval per connection")
	flag.DurationVar(&c.settle, "settle", 20*time.Second, "at most this long waiting for node RSS to settle before each reading")
	flag.StringVar(&c.metrics, "node-metrics", "", "comma-separated /metrics URLs of the access nodes to measure")
	flag.IntVar(&c.srcIPs, "src-ips", 1, "spread source addresses over N addresses from --src-base")
	srcBase := flag.String("src-base", "127.0.0.1", "the first source address (IPv4); with --procs each shard binds its own range after it; every address must be on this host")
	flag.IntVar(&c.concurrency, "concurrency", 64, "logins in flight at once")
	flag.StringVar(&c.jsonOut, "json", "", "also write the report as JSON to this file")
	flag.IntVar(&c.msgRate, "msg-rate", 0, "c2c messages per second in total, connection 2k to 2k+1 (0: no traffic)")
	flag.IntVar(&c.msgPairs, "msg-pairs", 0, "send the c2c traffic over only this many pairs, spread over all of them (0: every pair); fewer pairs batch more messages per write")
	flag.DurationVar(&c.msgTick, "msg-tick", 5*time.Millisecond, "c2c sends leave in a burst every tick; a shorter tick smooths the load, a longer one batches more per write")
	flag.DurationVar(&c.msgWarmup, "msg-warmup", 2*time.Second, "c2c traffic at the same rate before the measured --msg-duration, not counted (a fresh system's first second is its streams and heaps growing)")
	flag.DurationVar(&c.msgDuration, "msg-duration", 10*time.Second, "how long the c2c traffic runs")
	flag.StringVar(&c.regionA, "region-a", "", "region asked for by even connections (senders)")
	flag.StringVar(&c.regionB, "region-b", "", "region asked for by odd connections (recipients); differ from region-a for cross-node traffic")
	flag.IntVar(&c.payload, "payload", 100, "c2c payload bytes")
	flag.StringVar(&c.dispMetrics, "dispatcher-metrics", "", "the dispatcher's /metrics URL, for its RSS and CPU in the report (default: <dispatcher>/metrics; \"-\": none)")
	flag.DurationVar(&c.idleWindow, "idle-cpu-window", 0, "after the nodes settle, measure their CPU over this window of idle holding (heartbeats only); --hold must cover it")
	flag.BoolVar(&c.reconnect, "reconnect", false, "when a node drops a connection, come back as the SDK does: backoff, then the dispatcher with exclude=<that node>")
	flag.DurationVar(&c.loginDeadline, "login-deadline", 0, "with --procs: give up if the shards have not all logged in by then (0: 4 × conns/rate + 5 min)")
	flag.BoolVar(&c.countArrivals, "count-arrivals", false, "match every DELIVERED SendAck with the Delivers its recipient read: report lost messages and msg_ids read twice (one lock per message: off for throughput runs)")
	flag.IntVar(&c.procs, "procs", 1, "spread the connections over this many load processes (each holds conns/procs; one process may open ~19,900 sockets here)")
	flag.IntVar(&c.shard, "shard", -1, "internal: this process is shard N of a --procs run")
	flag.StringVar(&c.room, "room", "", "room mode: the --conns connections join this room and the first --room-publishers publish to it at --room-rate for --msg-warmup + --msg-duration (one process)")
	flag.IntVar(&c.roomPublishers, "room-publishers", 1, "room mode: members that publish, in turn")
	flag.IntVar(&c.roomRate, "room-rate", 30, "room mode: publishes per second in all")
	flag.Parse()
	if a, err := netip.ParseAddr(*srcBase); err != nil || !a.Is4() {
		fmt.Fprintln(os.Stderr, "loadgen: --src-base must be an IPv4 address")
		os.Exit(2)
	} else {
		c.srcBase = a
	}
	if c.conns <= 0 || c.rate <= 0 || c.srcIPs < 1 || c.procs < 1 || c.procs*c.srcIPs > 250 {
		fmt.Fprintln(os.Stderr, "loadgen: --conns, --rate must be > 0, --procs >= 1 and --procs × --src-ips ≤ 250")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if c.shard < 0 {
		checkOS(os.Stderr, c.conns, c.procs, c.procs*c.srcIPs)
	}
	if c.room != "" {
		rr, err := runRoom(ctx, c)
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
		rr.print(os.Stdout)
		if c.jsonOut != "" {
			b, _ := json.MarshalIndent(rr, "", "  ")
			if err := os.WriteFile(c.jsonOut, b, 0o644); err != nil {
				fmt.Fprintln(os.Stderr, "loadgen:", err)
				os.Exit(1)
			}
		}
		return
	}
	var rep *report
	var err error
	if c.procs > 1 && c.shard < 0 {
		rep, err = runShards(ctx, c)
	} else {
		rep, err = run(ctx, c)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
	rep.print(os.Stdout)
	if c.jsonOut != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(c.jsonOut, b, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(1)
		}
	}
}

type report struct {
	Conns            int            `json:"conns_requested"`
	LoggedIn         int64          `json:"logged_in"`
	Errors           map[string]int `json:"errors"`
	LoginSeconds     float64        `json:"login_phase_seconds"`
	LoginsPerSecond  float64        `json:"logins_per_second"`
	EndpointP50MS    float64        `json:"endpoint_p50_ms"`
	EndpointP99MS    float64        `json:"endpoint_p99_ms"`
	LoginP50MS       float64        `json:"login_p50_ms"`
	LoginP99MS       float64        `json:"login_p99_ms"`
	NodeRSSBefore    float64        `json:"node_rss_before_bytes"`
	NodeRSSAfter     float64        `json:"node_rss_after_bytes"`
	NodeHeapBefore   float64        `json:"node_heap_before_bytes"`
	NodeHeapAfter    float64        `json:"node_heap_after_bytes"`
	NodeConns        float64        `json:"node_connections"`
	RSSPerConnKiB    float64        `json:"rss_per_conn_kib"`
	HeapPerConnKiB   float64        `json:"heap_per_conn_kib"`
	ClientRSSAfterMB float64        `json:"loadgen_rss_mib"`
	Servers          *serverReport  `json:"servers,omitempty"`
	Storm            *stormReport   `json:"reconnects,omitempty"`
	Msgs             *msgReport     `json:"c2c,omitempty"`
}

type msgReport struct {
	Rate       int            `json:"target_rate"`
	Sent       int64          `json:"sent"`
	Outcomes   map[string]int `json:"outcomes"`
	Unanswered int64          `json:"unanswered"`
	Seconds    float64        `json:"seconds"`
	PerSecond  float64        `json:"acked_per_second"`
	P50MS      float64        `json:"rtt_p50_ms"`
	P90MS      float64        `json:"rtt_p90_ms"`
	P99MS      float64        `json:"rtt_p99_ms"`
	MaxMS      float64        `json:"rtt_max_ms"`
	// With --count-arrivals (warm-up included): DELIVERED SendAcks, those
	// whose message the recipient never read, msg_ids read more than once.
	Checked    bool  `json:"arrivals_counted,omitempty"`
	Delivered  int64 `json:"delivered_acks,omitempty"`
	Lost       int64 `json:"lost,omitempty"`
	Duplicates int64 `json:"duplicates,omitempty"`
	SameNode   int   `json:"pairs_same_node"`
	CrossNode  int   `json:"pairs_cross_node"`
}

func (r *report) print(w io.Writer) {
	fmt.Fprintf(w, "\nlogged in        %d of %d in %.2fs (%.0f logins/s)\n", r.LoggedIn, r.Conns, r.LoginSeconds, r.LoginsPerSecond)
	fmt.Fprintf(w, "endpoint call    p50 %.2f ms  p99 %.2f ms\n", r.EndpointP50MS, r.EndpointP99MS)
	fmt.Fprintf(w, "connect+login    p50 %.2f ms  p99 %.2f ms\n", r.LoginP50MS, r.LoginP99MS)
	if len(r.Errors) > 0 {
		fmt.Fprintf(w, "errors           %v\n", r.Errors)
	}
	if r.NodeConns > 0 {
		fmt.Fprintf(w, "node RSS         %.1f MiB -> %.1f MiB with %.0f connections: %.2f KiB per connection\n",
			r.NodeRSSBefore/(1<<20), r.NodeRSSAfter/(1<<20), r.NodeConns, r.RSSPerConnKiB)
		fmt.Fprintf(w, "node Go heap     %.1f MiB -> %.1f MiB: %.2f KiB per connection\n",
			r.NodeHeapBefore/(1<<20), r.NodeHeapAfter/(1<<20), r.HeapPerConnKiB)
	}
	fmt.Fprintf(w, "loadgen RSS      %.1f MiB\n", r.ClientRSSAfterMB)
	r.Servers.print(w)
	r.Storm.print(w)
	if m := r.Msgs; m != nil {
		fmt.Fprintf(w, "c2c              %d pairs same-node, %d cross-node; target %d/s\n", m.SameNode, m.CrossNode, m.Rate)
		fmt.Fprintf(w, "c2c sent         %d in %.1fs: %.0f SendAcks/s, outcomes %v, unanswered %d\n", m.Sent, m.Seconds, m.PerSecond, m.Outcomes, m.Unanswered)
		if m.Checked {
			fmt.Fprintf(w, "c2c arrivals     %d DELIVERED (warm-up included): %d never read (lost), %d read twice (duplicates)\n", m.Delivered, m.Lost, m.Duplicates)
		}
		fmt.Fprintf(w, "c2c send->ack    p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  max %.2f ms\n", m.P50MS, m.P90MS, m.P99MS, m.MaxMS)
	}
}

// conn is one simulated client; the load tool keeps a goroutine per
// connection only to read Pongs.
type conn struct {
	c      net.Conn // swapped only by the connection's reader, under wmu
	uid    string
	node   string
	region string
	src    int
	seq    atomic.Uint64
	wmu    sync.Mutex // one writer at a time: heartbeats, sends, acks
}

// close closes the current socket (the reader may be swapping it).
func (cn *conn) close() {
	cn.wmu.Lock()
	cn.c.Close()
	cn.wmu.Unlock()
}

func (cn *conn) write(f *wirepb.Frame) {
	b, _ := wire.Append(nil, f, wire.DefaultMaxFrame)
	cn.writeRaw(b)
}

// writeRaw writes whole encoded frames in one Write.
func (cn *conn) writeRaw(b []byte) {
	cn.wmu.Lock()
	_ = cn.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = cn.c.Write(b)
	cn.wmu.Unlock()
}

func run(ctx context.Context, c config) (*report, error) {
	rep := &report{Conns: c.conns, Errors: map[string]int{}}
	pr := newProbe(c)
	if err := pr.begin(ctx, rep); err != nil {
		return nil, err
	}
	// MaxConnsPerHost: a reconnect storm must not open a socket per client
	// to the dispatcher (its open files are limited too).
	httpc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		MaxIdleConnsPerHost: c.concurrency, MaxConnsPerHost: c.concurrency}}
	var (
		mu        sync.Mutex
		conns     = make([]*conn, c.conns)
		endpointL []time.Duration
		loginL    []time.Duration
		loggedIn  atomic.Int64
		wg        sync.WaitGroup
	)
	fail := func(kind string) {
		mu.Lock()
		rep.Errors[kind]++
		mu.Unlock()
	}
	// Each connection is read and kept alive from the moment it is logged
	// in (a long login phase must not let the first ones idle out):
	// heartbeats from one goroutine, Pongs read per connection.
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var readers sync.WaitGroup
	var lost atomic.Int64
	st := &storm{srcBase: c.srcBase, transport: c.transport}
	mt := newMsgTracker()
	if c.countArrivals {
		mt.arr = newArrivals()
	}
	var live []*conn // guarded by mu
	startReader := func(cn *conn) {
		readers.Add(1)
		go func() {
			defer readers.Done()
			r := &connReader{cn: cn, mt: mt}
			for {
				r.serve(cn.c) // a new frame reader per socket
				if hctx.Err() != nil {
					return
				}
				if !c.reconnect || !st.redial(hctx, httpc, c.dispatcher, cn) {
					lost.Add(1)
					return
				}
			}
		}()
	}
	go heartbeats(hctx, func() []*conn {
		mu.Lock()
		defer mu.Unlock()
		return live
	}, c.heartbeat)
	sem := make(chan struct{}, c.concurrency)
	interval := time.Second / time.Duration(c.rate)
	start := time.Now()
	progressDone := make(chan struct{})
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-progressDone:
				return
			case <-t.C:
				if c.shard < 0 {
					fmt.Fprintf(os.Stderr, "\r%d/%d logged in, %.0f/s   ", loggedIn.Load(), c.conns, float64(loggedIn.Load())/time.Since(start).Seconds())
				}
			}
		}
	}()
	for i := 0; i < c.conns && ctx.Err() == nil; i++ {
		if next := start.Add(time.Duration(i) * interval); time.Until(next) > 0 {
			time.Sleep(time.Until(next))
		}
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			uid := "load-" + strconv.Itoa(i)
			if c.shard >= 0 {
				uid = "load-" + strconv.Itoa(c.shard) + "-" + strconv.Itoa(i)
			}
			t0 := time.Now()
			region := c.regionA
			if i%2 == 1 {
				region = c.regionB
			}
			ep, err := endpoint(ctx, httpc, c.dispatcher, c.transport, uid, region)
			if err != nil {
				fail("endpoint")
				return
			}
			t1 := time.Now()
			src := i % c.srcIPs
			if c.shard >= 0 {
				src = 1 + c.shard*c.srcIPs + src // --src-base + 1 and up, a range per shard
			}
			cn, err := connect(ep, c.srcBase, src)
			if err != nil {
				fail(err.Error())
				return
			}
			cn.uid, cn.node, cn.region, cn.src = uid, ep.NodeID, region, src
			t2 := time.Now()
			mu.Lock()
			conns[i] = cn
			live = append(live, cn)
			startReader(cn)
			endpointL = append(endpointL, t1.Sub(t0))
			loginL = append(loginL, t2.Sub(t1))
			mu.Unlock()
			loggedIn.Add(1)
		}(i)
	}
	wg.Wait()
	close(progressDone)
	rep.LoginSeconds = time.Since(start).Seconds()
	rep.LoggedIn = loggedIn.Load()
	rep.LoginsPerSecond = float64(rep.LoggedIn) / rep.LoginSeconds
	rep.EndpointP50MS, rep.EndpointP99MS = pct(endpointL, 0.5), pct(endpointL, 0.99)
	rep.LoginP50MS, rep.LoginP99MS = pct(loginL, 0.5), pct(loginL, 0.99)
	pr.loggedIn(rep)
	fmt.Fprintln(os.Stderr)
	if c.shard >= 0 {
		fmt.Println("READY") // the parent measures the nodes now
	}
	// A shard holds from when its parent has measured the nodes (the
	// parent closes our stdin), so no shard leaves during the idle window.
	measured := make(chan struct{})
	if c.shard >= 0 {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			close(measured)
		}()
	} else {
		close(measured)
	}

	if c.msgRate > 0 {
		rep.Msgs = traffic(ctx, c, conns, mt)
	}
	pr.settled(ctx, rep)
	pr.idle(ctx, rep)
	select {
	case <-ctx.Done():
	case <-measured:
	}
	select {
	case <-ctx.Done():
	case <-time.After(c.hold):
	}
	rep.ClientRSSAfterMB = selfRSS() / (1 << 20)
	cancel()
	for _, cn := range live {
		cn.close()
	}
	readers.Wait()
	st.report(rep)
	if n := lost.Load(); n > 0 {
		rep.Errors["closed_by_node_during_hold"] = int(n)
	}
	return rep, nil
}

func splitNonEmpty(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func endpoint(ctx context.Context, hc *http.Client, base, transport, uid, region string, exclude ...string) (*api.EndpointResponse, error) {
	q := url.Values{"uid": {uid}, "device": {"load"}, "transport": {transport}}
	if region != "" {
		q.Set("region", region)
	}
	if len(exclude) > 0 {
		q.Set("exclude", strings.Join(exclude, ","))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/endpoint?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil, fmt.Errorf("endpoint: HTTP %d", resp.StatusCode)
	}
	var ep api.EndpointResponse
	return &ep, json.NewDecoder(resp.Body).Decode(&ep)
}

// connect dials the node ep names; src > 0 binds the source address to
// base + src (src 0 lets the kernel choose).
func connect(ep *api.EndpointResponse, base netip.Addr, src int) (*conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second, KeepAlive: -1}
	if src > 0 {
		b := base.As4()
		v := binary.BigEndian.Uint32(b[:]) + uint32(src)
		d.LocalAddr = &net.TCPAddr{IP: net.IPv4(byte(v>>24), byte(v>>16), byte(v>>8), byte(v))}
		// Without IP_BIND_ADDRESS_NO_PORT, bind() picks the source port
		// alone, from half the ephemeral range (~14,000 ports), and the
		// search turns into seconds of kernel time per connect as that
		// half fills. With it, connect() picks the port for the whole
		// 4-tuple, so one source address reaches every node with the
		// whole range each.
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	c, err := dialNode(&d, ep)
	if err != nil {
		return nil, err
	}
	b, _ := wire.Append(nil, &wirepb.Frame{Body: &wirepb.Frame_Login{Login: &wirepb.Login{Token: ep.Token, ClientVersion: "loadgen"}}}, wire.DefaultMaxFrame)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(b); err != nil {
		c.Close()
		return nil, errors.New("login_write")
	}
	var f wirepb.Frame
	if err := wire.NewReader(c, wire.DefaultMaxFrame).Read(&f); err != nil || f.GetLoginAck() == nil {
		c.Close()
		if e := f.GetError(); e != nil {
			return nil, errors.New("login_" + strings.ToLower(strings.TrimPrefix(e.Code.String(), "ERROR_CODE_")))
		}
		return nil, errors.New("login_read")
	}
	_ = c.SetDeadline(time.Time{})
	return &conn{c: c}, nil
}

// heartbeats pings every logged-in connection once per interval, spread
// evenly over it; connections logged in during a round join the next one.
// The pings due are sent every heartbeatStep rather than each on a timer
// of its own: at ~20,000 clients a process, a wakeup per ping was much of
// the load tool's own cost, which on one box it shares with the nodes.
func heartbeats(ctx context.Context, conns func() []*conn, every time.Duration) {
	t := time.NewTicker(heartbeatStep)
	defer t.Stop()
	tick := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	var ping []byte
	for {
		round := time.Now()
		cs := conns()
		for i := 0; i < len(cs); {
			if time.Until(round.Add(every*time.Duration(i)/time.Duration(len(cs)))) > 0 {
				if !tick() {
					return
				}
				continue
			}
			cn := cs[i]
			ping, _ = wire.Append(ping[:0], &wirepb.Frame{Body: &wirepb.Frame_Ping{Ping: &wirepb.Ping{Seq: cn.seq.Add(1)}}}, wire.DefaultMaxFrame)
			cn.writeRaw(ping)
			i++
		}
		for len(cs) == 0 || time.Until(round.Add(every)) > 0 {
			if !tick() {
				return
			}
			if len(cs) == 0 {
				break
			}
		}
	}
}

// heartbeatStep is how often heartbeats sends the pings that are due.
const heartbeatStep = 20 * time.Millisecond

func pct(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return pctSorted(s, p)
}

// pctSorted is pct of an already sorted slice.
func pctSorted(s []time.Duration, p float64) float64 {
	if len(s) == 0 {
		return 0
	}
	return float64(s[int(math.Min(float64(len(s)-1), p*float64(len(s))))]) / 1e6
}

func selfRSS() float64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseFloat(f[1], 64)
	return pages * float64(os.Getpagesize())
}

// traffic sends msgRate messages a second for msgDuration, connection 2k to
// 2k+1 (round-robin over the pairs, or over --msg-pairs of them spread
// evenly), then waits (bounded) for the last SendAcks. Each tick encodes all
// of one sender's Sends into one buffer and writes it with one Write.
func traffic(ctx context.Context, c config, conns []*conn, mt *msgTracker) *msgReport {
	type sender struct {
		cn     *conn
		lastID uint64 // client_msg_id strictly increases per connection
		buf    []byte // this tick's Sends, whole frames
	}
	type pair struct {
		from *sender
		to   *conn
	}
	var all []pair
	for i := 0; i+1 < len(conns); i += 2 {
		if conns[i] == nil || conns[i+1] == nil {
			continue
		}
		all = append(all, pair{&sender{cn: conns[i]}, conns[i+1]})
	}
	pairs := all
	if n := c.msgPairs; n > 0 && n < len(all) {
		pairs = make([]pair, n)
		for k := range pairs {
			pairs[k] = all[k*len(all)/n]
		}
	}
	rep := &msgReport{Rate: c.msgRate}
	for _, p := range pairs {
		if p.from.cn.node == p.to.node {
			rep.SameNode++
		} else {
			rep.CrossNode++
		}
	}
	if len(pairs) == 0 {
		return rep
	}
	send := &wirepb.Send{Payload: make([]byte, c.payload)}
	frame := &wirepb.Frame{Body: &wirepb.Frame_Send{Send: send}}
	tick := max(c.msgTick, 100*time.Microsecond)
	// Each sender writes once per tick, everything it owes by the clock,
	// but the senders' writes are spread over the tick (sender k at k/n of
	// it), as independent clients' are: every sender at the same instant is
	// a burst no real fleet makes, and it measured the burst's queueing.
	steps := max(1, min(len(pairs), int(tick/(250*time.Microsecond))))
	t := time.NewTicker(tick / time.Duration(steps))
	defer t.Stop()
	perPair := float64(c.msgRate) / float64(len(pairs))
	sent := make([]int64, len(pairs))
	total := c.msgWarmup + c.msgDuration
	begin := time.Now()
	start := begin.Add(c.msgWarmup)       // the measured part
	from := mt.id() + uint64(c.msgWarmup) // ids (send times) from here on are measured
	mt.from.Store(int64(from))
	for step := 0; time.Since(begin) < total && ctx.Err() == nil; step++ {
		<-t.C
		// What is owed follows the clock, not the ticks: a step the ticker
		// dropped while this loop was busy is made up at the pair's next.
		elapsed := min(time.Since(begin), total).Seconds()
		for k := step % steps; k < len(pairs); k += steps {
			p := pairs[k]
			s := p.from
			for owed := int64(perPair*elapsed) - sent[k]; owed > 0; owed-- {
				id := mt.id()
				if id <= s.lastID {
					id = s.lastID + 1
				}
				s.lastID = id
				send.ClientMsgId, send.ToUid = id, p.to.uid
				s.buf, _ = wire.Append(s.buf, frame, wire.DefaultMaxFrame)
				sent[k]++
				if id >= from {
					rep.Sent++
				}
			}
			if len(s.buf) > 0 {
				s.cn.writeRaw(s.buf)
				s.buf = s.buf[:0]
			}
		}
	}
	sendEnd := time.Since(start)
	deadline := time.Now().Add(15 * time.Second)
	for mt.acks.Load() < rep.Sent && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	rep.Seconds = sendEnd.Seconds()
	rtts, outc := mt.results()
	slices.Sort(rtts)
	rep.Outcomes = outc
	rep.Unanswered = rep.Sent - int64(len(rtts))
	rep.PerSecond = float64(len(rtts)) / time.Since(start).Seconds()
	rep.P50MS, rep.P90MS, rep.P99MS = pctSorted(rtts, 0.5), pctSorted(rtts, 0.9), pctSorted(rtts, 0.99)
	rep.MaxMS = pctSorted(rtts, 1)
	if mt.arr != nil {
		rep.Checked = true
		rep.Delivered, rep.Lost, rep.Duplicates = mt.arr.count()
	}
	return rep
}
