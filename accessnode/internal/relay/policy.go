package relay

import (
	"context"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/imgate/imgate/proto/etcdkeys"
	"github.com/imgate/imgate/proto/etcdwatch"
	"github.com/imgate/imgate/proto/nodepb"
)

// The login policy (<prefix>/config/login_policy) is enforced by each
// uid's home, the one place that sees every device of the uid: when a
// login takes the uid over a limit, the home drops the losers from its
// shard and kicks them through their holders (KickSession, as for a newer
// login of the same device, with a detail that names the policy). Which
// sessions lose depends only on their login times, never on the order
// their entries arrive in, so a home that moved or a resync picks the
// same losers.

// enforce applies pol to uid's entries after device logged in; it returns
// the entries kept and the losers.
func enforce(es []dirEntry, device string, pol *etcdkeys.LoginPolicy) (kept, losers []dirEntry) {
	if pol.MaxDevices <= 0 && !pol.OnePerClass {
		return es, nil
	}
	// Oldest first; the rule keeps the newest (oldest lose) or the oldest.
	sort.Slice(es, func(i, j int) bool {
		if es[i].loginAt != es[j].loginAt {
			return es[i].loginAt < es[j].loginAt
		}
		return es[i].device < es[j].device
	})
	keep := func(group []dirEntry, n int) (kept, lost []dirEntry) {
		if len(group) <= n {
			return group, nil
		}
		if pol.Loses == etcdkeys.LosesNewest {
			return group[:n], group[n:]
		}
		return group[len(group)-n:], group[:len(group)-n]
	}
	if pol.OnePerClass {
		class := etcdkeys.DeviceClass(device)
		var same, other []dirEntry
		for _, e := range es {
			if etcdkeys.DeviceClass(e.device) == class {
				same = append(same, e)
			} else {
				other = append(other, e)
			}
		}
		var lost []dirEntry
		same, lost = keep(same, 1)
		losers = append(losers, lost...)
		es = append(other, same...)
		sort.Slice(es, func(i, j int) bool {
			if es[i].loginAt != es[j].loginAt {
				return es[i].loginAt < es[j].loginAt
			}
			return es[i].device < es[j].device
		})
	}
	if pol.MaxDevices > 0 {
		var lost []dirEntry
		es, lost = keep(es, pol.MaxDevices)
		losers = append(losers, lost...)
	}
	return es, losers
}

const policyDetail = "too many devices logged in (login policy)"

// loginPolicy is the policy in force (nil: none).
func (r *Relay) loginPolicy() *etcdkeys.LoginPolicy { return r.policy.Load() }

// watchPolicy keeps r.policy equal to the login_policy key until ctx ends;
// an invalid value is logged and counts as absent.
func (r *Relay) watchPolicy(ctx context.Context) {
	key := r.cfg.Schema.LoginPolicy()
	set := func(b []byte, present bool) {
		if !present {
			r.policy.Store(nil)
			return
		}
		p, err := etcdkeys.ParseLoginPolicy(b)
		if err != nil {
			r.log.Warn().Err(err).Str("key", key).Msg("ignoring an invalid login policy; no device limit")
			r.policy.Store(nil)
			return
		}
		r.policy.Store(&p)
	}
	_ = etcdwatch.Run(ctx, r.cli, etcdwatch.Config{
		Ranges: []etcdwatch.Range{{Key: key}},
		ReList: 30 * time.Second,
		Listed: func(l etcdwatch.Listing) {
			if kvs := l.KVs[0]; len(kvs) > 0 {
				set(kvs[0].Value, true)
			} else {
				set(nil, false)
			}
		},
		Changed: func(_ int, evs []*clientv3.Event) {
			for _, ev := range evs {
				set(ev.Kv.Value, ev.Type == clientv3.EventTypePut)
			}
		},
	})
}

// kickLosers kicks the sessions the login policy took out of the shard.
func (r *Relay) kickLosers(uid string, losers []dirEntry) {
	for _, k := range losers {
		r.policyKicks.Add(1)
		if k.holder == r.cfg.NodeID {
			r.kickLocalWhy(uid, k.device, k.loginAt, policyDetail)
			continue
		}
		if p := r.peer(k.holder); p != nil {
			p.enqueue(&nodepb.ForwardFrame{Body: &nodepb.ForwardFrame_Kick{Kick: &nodepb.KickSession{
				Uid: uid, Device: k.device, LoginAtNs: k.loginAt, Detail: policyDetail}}})
		}
	}
}

// detailKicker kicks one session with a detail of its own; the gateway is
// one.
type detailKicker interface {
	KickSessionDetail(uid, device string, loginAt int64, detail string) bool
}

// kickLocalWhy is kickLocal with the text the client sees.
func (r *Relay) kickLocalWhy(uid, device string, loginAt int64, detail string) {
	dk, ok := r.local.(detailKicker)
	if detail == "" || !ok {
		r.kickLocal(uid, device, loginAt)
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		dk.KickSessionDetail(uid, device, loginAt, detail)
	}()
}
