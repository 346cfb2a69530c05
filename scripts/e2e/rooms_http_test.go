package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/imgate/imgate/proto/client"
)

// roomCall is one call to the dispatcher's /v1/rooms/ with the push token
// (token empty: none), and its JSON answer.
func roomCall(t *testing.T, base, token, method, path, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// roomMessage waits for the message with payload on c, skipping others
// (the probes of reachable).
func roomMessage(t *testing.T, c *client.Client, payload string) client.Message {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case m := <-c.Messages():
			if string(m.Payload) == payload {
				return m
			}
		case <-timeout:
			t.Fatalf("no room message %q on node %s", payload, c.NodeID())
		}
	}
}

// TestRoomsThroughTheDispatcher: a backend joins two users on two real
// node processes to a room over HTTP, publishes to it (both get the
// message, the answer says delivered over 2 nodes), reads the room's
// members, and takes one user out.
func TestRoomsThroughTheDispatcher(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	f := startFleet(t, "", "")
	a := dialDevice(t, f.base, "room-a", "phone")
	b, bName := dialElsewhere(t, f.base, a.NodeID(), func(i int) (string, string) { return fmt.Sprintf("room-b%d", i), "phone" })
	prober := dialDevice(t, f.base, "room-prober", "phone")
	reachable(t, prober, "room-a", 1)
	reachable(t, prober, bName, 1)

	room := "/v1/rooms/" + url.PathEscape("team/go é")
	if code, _ := roomCall(t, f.base, "", http.MethodPost, room+"/join", `{"uids":["room-a"]}`); code != http.StatusUnauthorized {
		t.Fatalf("join without token: %d", code)
	}
	if code, out := roomCall(t, f.base, testPushToken, http.MethodPost, "/v1/rooms/a%01b/join", `{"uids":["room-a"]}`); code != http.StatusBadRequest {
		t.Fatalf("control character in the room: %d %v", code, out)
	}
	code, out := roomCall(t, f.base, testPushToken, http.MethodPost, room+"/join", `{"uids":["room-a","`+bName+`"]}`)
	if code != http.StatusOK || out["changed"] != float64(2) || len(out["nodes"].([]any)) != 2 || out["incomplete"] != false {
		t.Fatalf("join: %d %v", code, out)
	}
	waitFor(t, "2 members at the room's home", 15*time.Second, func() bool {
		code, out := roomCall(t, f.base, testPushToken, http.MethodGet, room, "")
		return code == http.StatusOK && out["members"] == float64(2) && len(out["nodes"].([]any)) == 2 && out["incomplete"] == false
	})
	code, out = roomCall(t, f.base, testPushToken, http.MethodGet, room, "")
	if out["room"] != "team/go é" || out["broadcast"] != false {
		t.Fatalf("info: %d %v", code, out)
	}
	for _, n := range out["nodes"].([]any) {
		if n := n.(map[string]any); n["members"] != float64(1) || (n["node_id"] != a.NodeID() && n["node_id"] != b.NodeID()) {
			t.Fatalf("info node %v (clients on %s, %s)", n, a.NodeID(), b.NodeID())
		}
	}

	code, out = roomCall(t, f.base, testPushToken, http.MethodPost, room+"/publish", `{"payload":"hello room","content_type":"text/plain","from":"bot"}`)
	if code != http.StatusOK || out["outcome"] != "delivered" || out["nodes"] != float64(2) || out["devices"] != float64(2) ||
		out["acked"] != float64(2) || out["msg_id"] == nil || out["reason"] != nil {
		t.Fatalf("publish: %d %v", code, out)
	}
	for _, c := range []*client.Client{a, b} {
		m := roomMessage(t, c, "hello room")
		if m.From != "bot" || m.ContentType != "text/plain" {
			t.Fatalf("message on %s: %+v", c.NodeID(), m)
		}
	}

	code, out = roomCall(t, f.base, testPushToken, http.MethodPost, room+"/leave", `{"uids":["`+bName+`"]}`)
	if code != http.StatusOK || out["changed"] != float64(1) {
		t.Fatalf("leave: %d %v", code, out)
	}
	waitFor(t, "1 member at the room's home", 15*time.Second, func() bool {
		code, out := roomCall(t, f.base, testPushToken, http.MethodGet, room, "")
		return code == http.StatusOK && out["members"] == float64(1)
	})
}
