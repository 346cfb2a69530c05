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
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sort"
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
	conns       int
	rate        int
	hold        time.Duration
	heartbeat   time.Duration
	settle      time.Duration
	metrics     string
	srcIPs      int
	concurrency int
	jsonOut     string
	// c2c traffic: connection 2k sends to connection 2k+1.
	msgRate       int
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
}

func main() {
	var c config
	flag.StringVar(&c.dispatcher, "dispatcher", "http://127.0.0.1:8080", "dispatcher base URL")
	flag.IntVar(&c.conns, "conns", 1000, "connections to open and log in")
	flag.IntVar(&c.rate, "rate", 2000, "logins started per second")
	flag.DurationVar(&c.hold, "hold", 10*time.Second, "how long to hold the connections after the last login")
	flag.DurationVar(&c.heartbeat, "heartbeat", 30*time.Second, "ping interval per connection")
	flag.DurationVar(&c.settle, "settle", 20*time.Second, "at most this long waiting for node RSS to settle before each reading")
	flag.StringVar(&c.metrics, "node-metrics", "", "comma-separated /metrics URLs of the access nodes to measure")
	flag.IntVar(&c.srcIPs, "src-ips", 1, "spread source addresses over 127.0.0.1..127.0.0.N")
	flag.IntVar(&c.concurrency, "concurrency", 64, "logins in flight at once")
	flag.StringVar(&c.jsonOut, "json", "", "also write the report as JSON to this file")
	flag.IntVar(&c.msgRate, "msg-rate", 0, "c2c messages per second in total, connection 2k to 2k+1 (0: no traffic)")
	flag.DurationVar(&c.msgDuration, "msg-duration", 10*time.Second, "how long the c2c traffic runs")
	flag.StringVar(&c.regionA, "region-a", "", "region asked for by even connections (senders)")
	flag.StringVar(&c.regionB, "region-b", "", "region asked for by odd connections (recipients); differ from region-a for cross-node traffic")
	flag.IntVar(&c.payload, "payload", 100, "c2c payload bytes")
	flag.StringVar(&c.dispMetrics, "dispatcher-metrics", "", "the dispatcher's /metrics URL, for its RSS and CPU in the report (default: <dispatcher>/metrics; \"-\": none)")
	flag.DurationVar(&c.idleWindow, "idle-cpu-window", 0, "after the nodes settle, measure their CPU over this window of idle holding (heartbeats only); --hold must cover it")
	flag.BoolVar(&c.reconnect, "reconnect", false, "when a node drops a connection, come back as the SDK does: backoff, then the dispatcher with exclude=<that node>")
	flag.DurationVar(&c.loginDeadline, "login-deadline", 0, "with --procs: give up if the shards have not all logged in by then (0: 4 × conns/rate + 5 min)")
	flag.IntVar(&c.procs, "procs", 1, "spread the connections over this many load processes (each holds conns/procs; one process may open ~19,900 sockets here)")
	flag.IntVar(&c.shard, "shard", -1, "internal: this process is shard N of a --procs run")
	flag.Parse()
	if c.conns <= 0 || c.rate <= 0 || c.srcIPs < 1 || c.procs < 1 || c.procs*c.srcIPs > 250 {
		fmt.Fprintln(os.Stderr, "loadgen: --conns, --rate must be > 0, --procs >= 1 and --procs × --src-ips ≤ 250")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if c.shard < 0 {
		checkOS(os.Stderr, c.conns, c.procs, c.procs*c.srcIPs)
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
	SameNode   int            `json:"pairs_same_node"`
	CrossNode  int            `json:"pairs_cross_node"`
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
	st := &storm{}
	mt := newMsgTracker()
	var live []*conn // guarded by mu
	startReader := func(cn *conn) {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				r := wire.NewReader(cn.c, wire.DefaultMaxFrame)
				var f wirepb.Frame
				for r.Read(&f) == nil {
					switch b := f.Body.(type) {
					case *wirepb.Frame_Deliver:
						cn.write(&wirepb.Frame{Body: &wirepb.Frame_DeliverAck{DeliverAck: &wirepb.DeliverAck{MsgId: b.Deliver.MsgId}}})
					case *wirepb.Frame_SendAck:
						mt.acked(b.SendAck)
					}
				}
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
			ep, err := endpoint(ctx, httpc, c.dispatcher, uid, region)
			if err != nil {
				fail("endpoint")
				return
			}
			t1 := time.Now()
			src := i % c.srcIPs
			if c.shard >= 0 {
				src = 1 + c.shard*c.srcIPs + src // 127.0.0.2 and up, a range per shard
			}
			cn, err := connect(ep, src)
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

	if c.msgRate > 0 {
		rep.Msgs = traffic(ctx, c, conns, mt)
	}
	pr.settled(ctx, rep)
	pr.idle(ctx, rep)
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

func endpoint(ctx context.Context, hc *http.Client, base, uid, region string, exclude ...string) (*api.EndpointResponse, error) {
	q := url.Values{"uid": {uid}, "device": {"load"}}
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

func connect(ep *api.EndpointResponse, src int) (*conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second, KeepAlive: -1}
	if src > 0 {
		d.LocalAddr = &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+src))}
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
	c, err := d.Dial("tcp", ep.Addr)
	if err != nil {
		return nil, errors.New("connect")
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
func heartbeats(ctx context.Context, conns func() []*conn, every time.Duration) {
	for {
		round := time.Now()
		cs := conns()
		for i, cn := range cs {
			due := round.Add(every * time.Duration(i) / time.Duration(len(cs)))
			if d := time.Until(due); d > 2*time.Millisecond {
				select {
				case <-ctx.Done():
					return
				case <-time.After(d):
				}
			}
			cn.write(&wirepb.Frame{Body: &wirepb.Frame_Ping{Ping: &wirepb.Ping{Seq: cn.seq.Add(1)}}})
		}
		wait := time.Until(round.Add(every))
		if len(cs) == 0 {
			wait = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func pct(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
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

// msgTracker matches SendAcks to send times (client_msg_id carries the send
// time in nanoseconds since start, unique per connection).
type msgTracker struct {
	start time.Time
	mu    sync.Mutex
	rtts  []time.Duration
	outc  map[string]int
	acks  atomic.Int64
}

func newMsgTracker() *msgTracker { return &msgTracker{start: time.Now(), outc: map[string]int{}} }

func (m *msgTracker) id() uint64 { return uint64(time.Since(m.start)) }

func (m *msgTracker) acked(a *wirepb.SendAck) {
	rtt := time.Since(m.start) - time.Duration(a.ClientMsgId)
	name := strings.ToLower(strings.TrimPrefix(a.Outcome.String(), "OUTCOME_"))
	m.mu.Lock()
	m.rtts = append(m.rtts, rtt)
	m.outc[name]++
	m.mu.Unlock()
	m.acks.Add(1)
}

// traffic sends msgRate messages a second for msgDuration, connection 2k to
// 2k+1, then waits (bounded) for the last SendAcks.
func traffic(ctx context.Context, c config, conns []*conn, mt *msgTracker) *msgReport {
	type pair struct{ from, to *conn }
	var pairs []pair
	rep := &msgReport{Rate: c.msgRate}
	for i := 0; i+1 < len(conns); i += 2 {
		if conns[i] == nil || conns[i+1] == nil {
			continue
		}
		pairs = append(pairs, pair{conns[i], conns[i+1]})
		if conns[i].node == conns[i+1].node {
			rep.SameNode++
		} else {
			rep.CrossNode++
		}
	}
	if len(pairs) == 0 {
		return rep
	}
	payload := make([]byte, c.payload)
	const tick = 5 * time.Millisecond
	perTick := float64(c.msgRate) * tick.Seconds()
	t := time.NewTicker(tick)
	defer t.Stop()
	start := time.Now()
	var owed float64
	next := 0
	var lastID = make(map[*conn]uint64, len(pairs))
	for time.Since(start) < c.msgDuration && ctx.Err() == nil {
		<-t.C
		owed += perTick
		for ; owed >= 1; owed-- {
			p := pairs[next]
			next = (next + 1) % len(pairs)
			id := mt.id()
			if id <= lastID[p.from] {
				id = lastID[p.from] + 1
			}
			lastID[p.from] = id
			p.from.write(&wirepb.Frame{Body: &wirepb.Frame_Send{Send: &wirepb.Send{ClientMsgId: id, ToUid: p.to.uid, Payload: payload}}})
			rep.Sent++
		}
	}
	sendEnd := time.Since(start)
	deadline := time.Now().Add(15 * time.Second)
	for mt.acks.Load() < rep.Sent && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	rep.Seconds = sendEnd.Seconds()
	mt.mu.Lock()
	defer mt.mu.Unlock()
	rep.Outcomes = mt.outc
	rep.Unanswered = rep.Sent - int64(len(mt.rtts))
	rep.PerSecond = float64(len(mt.rtts)) / time.Since(start).Seconds()
	rep.P50MS, rep.P90MS, rep.P99MS = pct(mt.rtts, 0.5), pct(mt.rtts, 0.9), pct(mt.rtts, 0.99)
	rep.MaxMS = pct(mt.rtts, 1)
	return rep
}
