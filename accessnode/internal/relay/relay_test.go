package relay

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imgate/imgate/proto/wirepb"
)

func TestCrossNodeDeliveryMultiDeviceAndReplace(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id)
	}
	c.settled(3)
	alice := c.login("a", "alice", "phone")
	bobPhone := c.login("b", "bob", "phone")
	bobLaptop := c.login("c", "bob", "laptop")
	c.registered("bob", 2)

	ack := alice.send(t, "bob", "hi bob")
	if ack.Outcome != wirepb.Outcome_OUTCOME_DELIVERED || ack.Devices != 2 || ack.Acked != 2 {
		t.Fatalf("to two devices on two other nodes: %v", ack)
	}
	waitFor(t, "both devices", func() bool { return bobPhone.received("hi bob") == 1 && bobLaptop.received("hi bob") == 1 })
	if ack := alice.send(t, "nobody", "x"); ack.Outcome != wirepb.Outcome_OUTCOME_OFFLINE {
		t.Fatalf("offline: %v", ack)
	}

	// bob's phone logs in again on node c: the older session on b is kicked.
	newer := c.login("c", "bob", "phone")
	select {
	case k := <-bobPhone.kicked:
		if k.Reason != wirepb.KickReason_KICK_REASON_REPLACED {
			t.Fatalf("kick %v", k)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the older login on another node was not kicked")
	}
	waitFor(t, "directory updated", func() bool {
		ack := alice.send(t, "bob", "after replace")
		return ack.Outcome == wirepb.Outcome_OUTCOME_DELIVERED && ack.Devices == 2
	})
	if newer.received("after replace") == 0 || bobLaptop.received("after replace") == 0 {
		t.Fatal("the newer phone or the laptop missed the message")
	}
}

// TestReplaceKickFromAThirdNode: the uid's home is neither the node of the
// older login nor the node of the newer one; the kick travels home -> old
// holder on the home's own stream.
func TestReplaceKickFromAThirdNode(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"a", "b", "c"} {
		c.start(id)
	}
	c.settled(3)
	v := c.nodes["a"].rl.view.Load()
	uid := ""
	for i := 0; uid == ""; i++ {
		if u := fmt.Sprintf("carol-%d", i); v.home(u) == "a" {
			uid = u
		}
	}
	old := c.login("b", uid, "phone")
	c.registered(uid, 1)
	c.login("c", uid, "phone")
	select {
	case k := <-old.kicked:
		if k.Reason != wirepb.KickReason_KICK_REASON_REPLACED {
			t.Fatalf("kick %v", k)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the older login on b was not kicked by home a")
	}
}

// TestMembershipChangesLoseNothing runs steady traffic between users on the
// nodes that stay, while a node joins, another leaves cleanly and a third
// crashes. Every message to a user who stayed connected is delivered exactly
// once: no loss, no false offline.
func TestMembershipChangesLoseNothing(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"n1", "n2", "n3", "n4"} {
		c.start(id)
	}
	c.settled(4)
	// Clients only on n1 and n2; n3 and n4 hold directory shards only.
	var users []*user
	for i := 0; i < 16; i++ {
		node := []string{"n1", "n2"}[i%2]
		users = append(users, c.login(node, fmt.Sprintf("user-%d", i), "d"))
	}
	for _, u := range users {
		c.registered(u.uid, 1)
	}

	var (
		stop                             = make(chan struct{})
		wg                               sync.WaitGroup
		sent, delivered, offline, failed atomic.Int64
		mu                               sync.Mutex
		bad                              []string
		expected                         = map[*user][]string{}
	)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				from, to := users[rand.IntN(len(users))], users[rand.IntN(len(users))]
				if from == to {
					continue
				}
				payload := fmt.Sprintf("w%d-%d", w, i)
				sent.Add(1)
				ack := from.send(t, to.uid, payload)
				switch ack.Outcome {
				case wirepb.Outcome_OUTCOME_DELIVERED:
					delivered.Add(1)
					mu.Lock()
					expected[to] = append(expected[to], payload)
					mu.Unlock()
				case wirepb.Outcome_OUTCOME_OFFLINE:
					offline.Add(1)
					mu.Lock()
					bad = append(bad, fmt.Sprintf("%s -> %s: false offline", from.uid, to.uid))
					mu.Unlock()
				default:
					failed.Add(1)
					mu.Lock()
					bad = append(bad, fmt.Sprintf("%s -> %s: %v %v", from.uid, to.uid, ack.Outcome, ack.Reason))
					mu.Unlock()
				}
			}
		}()
	}
	waitFor(t, "traffic", func() bool { return delivered.Load() > 50 })
	c.start("n5") // join
	c.settled(5)
	waitFor(t, "traffic after join", func() bool { return delivered.Load() > 150 })
	c.leave("n3") // clean leave
	c.settled(4)
	waitFor(t, "traffic after leave", func() bool { return delivered.Load() > 250 })
	c.crash("n4") // crash: its lease ends by itself
	c.settled(3)
	waitFor(t, "traffic after crash", func() bool { return delivered.Load() > 350 })
	close(stop)
	wg.Wait()

	t.Logf("sent %d, delivered %d, offline %d, failed %d", sent.Load(), delivered.Load(), offline.Load(), failed.Load())
	if len(bad) > 0 {
		t.Fatalf("%d sends not delivered, e.g. %v", len(bad), bad[:min(5, len(bad))])
	}
	for u, payloads := range expected {
		for _, p := range payloads {
			if n := u.received(p); n != 1 {
				t.Fatalf("%s received %q %d times, want exactly once", u.uid, p, n)
			}
		}
	}
}
