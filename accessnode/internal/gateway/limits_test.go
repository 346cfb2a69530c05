package gateway

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/imgate/imgate/proto/wirepb"
)

func TestConnectionsPerAddressCapped(t *testing.T) {
	f := newFixture(t, Config{MaxConnsPerIP: 2})
	a := f.loggedIn("a", "d")
	f.loggedIn("b", "d")
	third := f.dial()
	wantError(t, third.read(), wirepb.ErrorCode_ERROR_CODE_OVERLOADED)
	third.expectClosed()
	// A connection that goes frees its place.
	a.c.Close()
	waitFor(t, "a's place freed", func() bool { return f.srv.Stats().Conns == 1 })
	f.loggedIn("c", "d")
	if n := f.srv.Stats().IPRefused; n != 1 {
		t.Fatalf("refused %d", n)
	}
}

func TestNewConnectionRatePerAddress(t *testing.T) {
	f := newFixture(t, Config{NewConnsPerIP: 0.001, NewConnsPerIPBurst: 2})
	f.loggedIn("a", "d")
	f.loggedIn("b", "d")
	fast := f.dial()
	wantError(t, fast.read(), wirepb.ErrorCode_ERROR_CODE_RATE_LIMITED)
	fast.expectClosed()
}

func TestMessageRatePerConnection(t *testing.T) {
	f := newFixture(t, Config{MsgsPerSec: 0.001, MsgBurst: 2})
	alice := f.loggedIn("alice", "phone")
	for i := 0; i < 2; i++ {
		alice.send("nobody", "x")
		if a := alice.read().GetSendAck(); a.GetOutcome() != wirepb.Outcome_OUTCOME_OFFLINE {
			t.Fatalf("within budget: %v", a)
		}
	}
	alice.send("nobody", "x")
	a := alice.read().GetSendAck()
	// Refused before the message got an id: msg_id is empty (protocol §3.5).
	if a.GetOutcome() != wirepb.Outcome_OUTCOME_FAILED || a.Reason != wirepb.ErrorCode_ERROR_CODE_RATE_LIMITED || a.MsgId != "" {
		t.Fatalf("over budget: %v", a)
	}
	// The connection stays up.
	alice.write(&wirepb.Frame{Body: &wirepb.Frame_Ping{Ping: &wirepb.Ping{Seq: 1}}})
	if alice.read().GetPong() == nil {
		t.Fatal("no pong after a rate-limited send")
	}
}

func TestByteRatePerConnection(t *testing.T) {
	// 1 byte/s with a burst of one largest frame (the floor): the first
	// large payload fits, the next does not; small control frames still do.
	f := newFixture(t, Config{BytesPerSec: 1})
	alice := f.loggedIn("alice", "phone")
	big := strings.Repeat("x", 40<<10)
	alice.send("nobody", big)
	if a := alice.read().GetSendAck(); a.GetOutcome() != wirepb.Outcome_OUTCOME_OFFLINE {
		t.Fatalf("within budget: %v", a)
	}
	alice.send("nobody", big)
	a := alice.read().GetSendAck()
	if a.GetOutcome() != wirepb.Outcome_OUTCOME_FAILED || a.Reason != wirepb.ErrorCode_ERROR_CODE_RATE_LIMITED {
		t.Fatalf("over budget: %v", a)
	}
	if st := f.srv.Stats(); st.BytesLimited != 1 || st.RateLimited != 1 {
		t.Fatalf("counted %d bytes-limited, %d rate-limited", st.BytesLimited, st.RateLimited)
	}
	alice.write(&wirepb.Frame{Body: &wirepb.Frame_Ping{Ping: &wirepb.Ping{Seq: 1}}})
	if alice.read().GetPong() == nil {
		t.Fatal("no pong after a byte-limited send")
	}
}

func TestIPLimitsForgetIdleAddresses(t *testing.T) {
	l := newIPLimits(10, 0, 0)
	now := time.Unix(1000, 0)
	for i := 0; i < 1000; i++ {
		ip := netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)})
		if l.admit(ip, now) != ipOK {
			t.Fatal("refused")
		}
		l.release(ip, now)
	}
	l.admit(netip.MustParseAddr("127.0.0.1"), now.Add(2*time.Minute))
	if n := l.size(); n != 1 {
		t.Fatalf("%d addresses remembered after they went idle", n)
	}
}

func TestMsgBudgetRefills(t *testing.T) {
	var b msgBudget
	const sec = int64(time.Second)
	if !b.take(1, 1, 1) || b.take(2, 1, 1) {
		t.Fatal("burst of 1")
	}
	if !b.take(2+sec, 1, 1) {
		t.Fatal("no refill after a second")
	}
}
