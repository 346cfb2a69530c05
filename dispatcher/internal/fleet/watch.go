package fleet

import (
	"context"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/imgate/imgate/dispatcher/internal/balance"
	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/etcdwatch"
	"github.com/imgate/imgate/proto/nodepb"
)

const (
	defaultListTimeout = 5 * time.Second
	retryMin           = 100 * time.Millisecond
	retryMax           = 5 * time.Second
	maxShownValue      = 256 // bytes of a rejected value kept for Status
	reconnectMaxGap    = 2 * time.Second
)

// Indexes of the ranges watchLoop follows.
const (
	rangeNodes = iota
	rangeConfig
)

// watchLoop follows nodes and config in etcd until ctx is done, through
// etcdwatch: a listing of both at one revision, the watch from there, a
// listing again every few seconds (which also catches an etcd restored or
// replaced) and after any failure. Owned by Run.
func (f *Fleet) watchLoop(ctx context.Context) {
	_ = etcdwatch.Run(ctx, f.etcd, etcdwatch.Config{
		Ranges: []etcdwatch.Range{
			rangeNodes:  {Key: f.keys.NodesPrefix(), Prefix: true},
			rangeConfig: {Key: f.keys.ConfigPrefix(), Prefix: true},
		},
		CallTimeout: f.listTimeout,
		RetryMin:    retryMin,
		RetryMax:    retryMax,
		Listed:      f.resync,
		Changed:     f.changed,
		Failed: func(err error, retryIn time.Duration) {
			f.m.etcdErrors.Inc()
			f.log.Warn().Err(err).Dur("retry_in", retryIn).Msg("etcd: cannot list or watch nodes and config; listing again")
		},
	})
}

// resync makes the table match a listing of nodes and config: entries
// absent from etcd are removed or reset to defaults, present ones are
// applied like watch events (so a bad value keeps the last good one).
func (f *Fleet) resync(l etcdwatch.Listing) {
	nodeKVs, cfgKVs := l.KVs[rangeNodes], l.KVs[rangeConfig]
	var toClose []*grpc.ClientConn
	f.mu.Lock()
	seenNodes := map[string]bool{}
	for _, kv := range nodeKVs {
		if id := f.keys.NodeIDFromKey(string(kv.Key)); id != "" {
			seenNodes[id] = true
		}
		toClose = append(toClose, f.applyNodeEvent(mvccpb.PUT, kv)...)
	}
	now := f.now()
	for id := range f.nodes {
		if !seenNodes[id] {
			toClose = append(toClose, f.unregister(id, now)...)
		}
	}
	type cfgKey struct{ id, field string }
	seenCfg := map[cfgKey]bool{}
	seenPolicy := false
	for _, kv := range cfgKVs {
		key := string(kv.Key)
		if key == f.keys.Policy() {
			seenPolicy = true
		} else if id, field, ok := f.keys.ParseNodeConfigKey(key); ok {
			seenCfg[cfgKey{id, string(field)}] = true
		}
		f.applyConfigEvent(mvccpb.PUT, kv)
	}
	if !seenPolicy {
		f.setPolicy(f.cfg.Policy, "default")
		f.policyRej = nil
	}
	for id, c := range f.configs {
		fields := []string{string(etcdkeys.FieldWeight), string(etcdkeys.FieldState), string(etcdkeys.FieldMaxConns)}
		for field := range c.rejected {
			fields = append(fields, field)
		}
		for _, field := range fields {
			if !seenCfg[cfgKey{id, field}] {
				f.deleteConfigField(id, etcdkeys.Field(field))
			}
		}
	}
	if !f.synced {
		f.synced = true
		f.log.Info().Int("nodes", len(nodeKVs)).Int64("revision", l.Revision).Msg("etcd: synced")
	}
	if l.WentBack {
		f.log.Warn().Int64("revision", l.Revision).Msg("etcd revision went back (restored or replaced); its listing is the truth now")
	}
	f.m.etcdSynced.Set(1)
	f.rebuild()
	f.mu.Unlock()
	closeConns(toClose)
}

// changed applies the events of one watch response on range i.
func (f *Fleet) changed(i int, evs []*clientv3.Event) {
	var toClose []*grpc.ClientConn
	f.mu.Lock()
	for _, ev := range evs {
		typ := mvccpb.PUT
		if ev.Type == clientv3.EventTypeDelete {
			typ = mvccpb.DELETE
		}
		if i == rangeNodes {
			toClose = append(toClose, f.applyNodeEvent(typ, ev.Kv)...)
		} else {
			f.applyConfigEvent(typ, ev.Kv)
		}
	}
	f.rebuild()
	f.mu.Unlock()
	closeConns(toClose)
}

// applyNodeEvent applies a put or delete of <prefix>/nodes/<id>. It returns
// connections to close once f.mu is released. Requires f.mu.
func (f *Fleet) applyNodeEvent(typ mvccpb.Event_EventType, kv *mvccpb.KeyValue) []*grpc.ClientConn {
	key := string(kv.Key)
	id := f.keys.NodeIDFromKey(key)
	if id == "" {
		f.log.Warn().Str("key", key).Msg("etcd: ignoring a key under nodes/ that is not a valid node id")
		return nil
	}
	if typ == mvccpb.DELETE {
		return f.unregister(id, f.now())
	}
	n := f.nodes[id]
	if n == nil {
		n = &node{id: id, health: HealthPending, tracker: balance.NewTracker()}
		f.nodes[id] = n
	}
	if n.regRejected != nil && n.regRejected.Revision == kv.ModRevision {
		return nil // the same bad value again (a re-list): already reported
	}
	reg, err := etcdkeys.ParseRegistration(kv.Value)
	if err == nil && reg.ID != id {
		err = fmt.Errorf("registration: id %q under the key of node %q", reg.ID, id)
	}
	if err != nil {
		n.regRejected = &Rejected{Value: shown(kv.Value), Error: err.Error(), Revision: kv.ModRevision}
		f.m.rejections.WithLabelValues("registration").Inc()
		ev := f.log.Warn().Str("node", id).Err(err).Str("value", shown(kv.Value))
		if n.hasReg {
			ev.Msg("etcd: bad registration rejected, keeping the last good one")
		} else {
			ev.Msg("etcd: bad registration rejected, node gets no clients")
		}
		return nil
	}
	n.regRejected = nil
	if n.unregistered {
		f.reregistered(n)
	}
	old, had := n.reg, n.hasReg
	n.reg, n.hasReg = reg, true
	switch {
	case !had:
		f.log.Info().Str("node", id).Str("addr", reg.Addrs["tcp"]).Str("grpc", reg.GRPCAddr).
			Str("region", reg.Region).Str("version", reg.Version).Msg("node registered")
	case old.GRPCAddr != reg.GRPCAddr || old.StartedAt != reg.StartedAt:
		f.log.Info().Str("node", id).Str("grpc", reg.GRPCAddr).Msg("node re-registered (restarted or moved)")
	default:
		return nil // same process, e.g. a new version string or region
	}
	// A new process: forget what the old one said until it answers.
	n.health, n.fails, n.lastErr, n.stats, n.load = HealthPending, 0, "", nil, nil
	n.loadFactor, n.overloaded, n.suppressed, n.slowSince = 0, false, false, time.Time{}
	var toClose []*grpc.ClientConn
	if had && old.GRPCAddr == reg.GRPCAddr && n.conn != nil {
		f.poke()
		return nil // keep the connection; gRPC reconnects by itself
	}
	if n.conn != nil {
		toClose = append(toClose, n.conn)
		n.conn, n.client = nil, nil
	}
	f.dial(n)
	f.poke()
	return toClose
}

// dial creates (without connecting) the gRPC client of n. Requires f.mu.
func (f *Fleet) dial(n *node) {
	n.dialErr = ""
	if f.closed {
		n.dialErr = "dispatcher shutting down"
		return
	}
	creds := f.cfg.Credentials
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(n.reg.GRPCAddr,
		grpc.WithTransportCredentials(creds),
		// Re-probe a dead node often enough that it is re-admitted within
		// seconds of coming back (gRPC's default backoff reaches 120 s).
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{
			BaseDelay: retryMin, Multiplier: 1.6, Jitter: 0.2, MaxDelay: reconnectMaxGap,
		}}),
	)
	if err != nil {
		n.dialErr = err.Error()
		f.log.Warn().Str("node", n.id).Err(err).Msg("cannot create a gRPC client for node")
		return
	}
	n.conn, n.client = conn, nodepb.NewNodeServiceClient(conn)
}

// removeNode drops node id. Requires f.mu.
func (f *Fleet) removeNode(id string) []*grpc.ClientConn {
	n := f.nodes[id]
	if n == nil {
		return nil
	}
	delete(f.nodes, id)
	f.m.forget(id)
	f.log.Info().Str("node", id).Str("health", string(n.health)).Msg("node removed (registration gone)")
	if n.conn != nil {
		return []*grpc.ClientConn{n.conn}
	}
	return nil
}

// applyConfigEvent applies a put or delete under <prefix>/config/.
// Requires f.mu.
func (f *Fleet) applyConfigEvent(typ mvccpb.Event_EventType, kv *mvccpb.KeyValue) {
	key := string(kv.Key)
	if key == f.keys.Policy() {
		f.applyPolicy(typ, kv)
		return
	}
	id, field, ok := f.keys.ParseNodeConfigKey(key)
	if !ok {
		f.log.Debug().Str("key", key).Msg("etcd: ignoring unknown config key")
		return
	}
	if typ == mvccpb.DELETE {
		f.deleteConfigField(id, field)
		return
	}
	c := f.configs[id]
	if c == nil {
		c = defaultConfig()
		f.configs[id] = c
	}
	if r, ok := c.rejected[string(field)]; ok && r.Revision == kv.ModRevision {
		return // the same bad value again (a re-list): already reported
	}
	raw := string(kv.Value)
	before := *c
	var err error
	switch field {
	case etcdkeys.FieldWeight:
		var w int
		if w, err = etcdkeys.ParseWeight(raw); err == nil {
			c.weight = w
		}
	case etcdkeys.FieldState:
		var s etcdkeys.State
		if s, err = etcdkeys.ParseState(raw); err == nil {
			c.state = s
		}
	case etcdkeys.FieldMaxConns:
		var m int64
		if m, err = etcdkeys.ParseMaxConns(raw); err == nil {
			c.maxConns = m
		}
	default:
		err = fmt.Errorf("unknown config field %q: want weight, state or max_conns", string(field))
	}
	if err != nil {
		if c.rejected == nil {
			c.rejected = map[string]Rejected{}
		}
		c.rejected[string(field)] = Rejected{Value: shown(kv.Value), Error: err.Error(), Revision: kv.ModRevision}
		f.m.rejections.WithLabelValues(string(field)).Inc()
		f.log.Warn().Str("node", id).Str("field", string(field)).Str("value", shown(kv.Value)).Err(err).
			Msg("etcd: bad config value rejected, keeping the last good one")
		return
	}
	_, wasRejected := c.rejected[string(field)]
	delete(c.rejected, string(field))
	if wasRejected || c.weight != before.weight || c.state != before.state || c.maxConns != before.maxConns {
		f.log.Info().Str("node", id).Str("field", string(field)).Str("value", strings.TrimSpace(raw)).Msg("node config applied")
	}
}

// deleteConfigField resets one field of node id to its default. Requires f.mu.
func (f *Fleet) deleteConfigField(id string, field etcdkeys.Field) {
	c := f.configs[id]
	if c == nil {
		return
	}
	d := defaultConfig()
	switch field {
	case etcdkeys.FieldWeight:
		c.weight = d.weight
	case etcdkeys.FieldState:
		c.state = d.state
	case etcdkeys.FieldMaxConns:
		c.maxConns = d.maxConns
	}
	delete(c.rejected, string(field))
	if c.isDefault() {
		delete(f.configs, id)
	}
}

// applyPolicy applies <prefix>/config/policy: a known policy is put in
// force on the balancer at once; an unknown one is rejected and the last
// good one stays; a delete returns to the flag's default. Requires f.mu.
func (f *Fleet) applyPolicy(typ mvccpb.Event_EventType, kv *mvccpb.KeyValue) {
	v := strings.TrimSpace(string(kv.Value))
	if typ == mvccpb.DELETE || v == "" {
		f.policyRej = nil
		f.setPolicy(f.cfg.Policy, "default")
		return
	}
	if r := f.policyRej; r != nil && r.Revision == kv.ModRevision {
		return // the same bad value again (a re-list): already reported
	}
	if _, err := balance.ByName(v); err != nil {
		f.policyRej = &Rejected{Value: shown(kv.Value), Error: err.Error(), Revision: kv.ModRevision}
		f.m.rejections.WithLabelValues("policy").Inc()
		f.log.Warn().Err(err).Str("value", shown(kv.Value)).Str("in_force", f.policy).
			Msg("etcd: bad policy rejected, keeping the one in force")
		return
	}
	f.policyRej = nil
	f.setPolicy(v, "etcd")
}

// setPolicy puts policy name in force. Requires f.mu.
func (f *Fleet) setPolicy(name, source string) {
	if name == f.policy && f.pub.Policy().Name() == name {
		return
	}
	p, err := balance.ByName(name)
	if err != nil {
		return // checked by callers
	}
	prev := f.policy
	f.policy = name
	f.pub.SetPolicy(p)
	f.m.setPolicy(name)
	f.log.Info().Str("policy", name).Str("previous", prev).Str("source", source).Msg("selection policy in force")
}

// shown is a value as kept for logs and Status: valid UTF-8, bounded.
func shown(b []byte) string {
	if len(b) > maxShownValue {
		b = b[:maxShownValue]
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}
