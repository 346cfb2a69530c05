package etcdkeys

import "testing"

func TestSchema(t *testing.T) {
	s := New("/imgate/")
	if got := s.Node("n1"); got != "/imgate/nodes/n1" {
		t.Fatal(got)
	}
	if got := s.NodeConfig("n1", FieldWeight); got != "/imgate/config/nodes/n1/weight" {
		t.Fatal(got)
	}
	if got := s.Policy(); got != "/imgate/config/policy" {
		t.Fatal(got)
	}
	if id := s.NodeIDFromKey("/imgate/nodes/n1"); id != "n1" {
		t.Fatal(id)
	}
	if id := s.NodeIDFromKey("/imgate/nodes/a/b"); id != "" {
		t.Fatal(id)
	}
	id, f, ok := s.ParseNodeConfigKey("/imgate/config/nodes/n1/state")
	if !ok || id != "n1" || f != FieldState {
		t.Fatal(id, f, ok)
	}
}

func TestParseValues(t *testing.T) {
	for _, v := range []string{"-1", "1001", "x", "", "1.5"} {
		if _, err := ParseWeight(v); err == nil {
			t.Errorf("weight %q accepted", v)
		}
	}
	if n, err := ParseWeight(" 250\n"); err != nil || n != 250 {
		t.Errorf("weight = %d, %v", n, err)
	}
	if _, err := ParseState("paused"); err == nil {
		t.Error("state paused accepted")
	}
	if s, err := ParseState("drain"); err != nil || s != StateDrain {
		t.Error(s, err)
	}
	if _, err := ParseMaxConns("-5"); err == nil {
		t.Error("negative max_conns accepted")
	}
}

func TestParseRegistration(t *testing.T) {
	good := `{"id":"n1","addrs":{"tcp":"127.0.0.1:7000"},"grpc_addr":"127.0.0.1:7001"}`
	if _, err := ParseRegistration([]byte(good)); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{`{`, `{"id":"n 1","addrs":{"tcp":"x"},"grpc_addr":"y"}`, `{"id":"n1","grpc_addr":"y"}`, `{"id":"n1","addrs":{"tcp":"x"}}`} {
		if _, err := ParseRegistration([]byte(bad)); err == nil {
			t.Errorf("accepted %s", bad)
		}
	}
}
