package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/imgate/imgate/proto/client"
)

type presenceAnswer struct {
	NodeID string `json:"node_id"`
	Users  []struct {
		UID     string `json:"uid"`
		State   string `json:"state"`
		Devices []struct {
			Device    string `json:"device"`
			NodeID    string `json:"node_id"`
			LoginAtMS int64  `json:"login_at_ms"`
		} `json:"devices"`
	} `json:"users"`
}

func getPresence(t *testing.T, base, token, query string) (int, presenceAnswer) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, base+"/v1/presence?"+query, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out presenceAnswer
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// TestPresenceThroughTheDispatcher: a backend asks GET /v1/presence about
// users on two real node processes and gets each device with its node and
// login time; without the push token it is refused, above 1,000 uids too.
func TestPresenceThroughTheDispatcher(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	f := startFleet(t, "", "")
	start := time.Now()
	a := dialDevice(t, f.base, "pres-a", "phone")
	b := dialDevice(t, f.base, "pres-a", "laptop")
	prober := dialDevice(t, f.base, "pres-prober", "phone")
	reachable(t, prober, "pres-a", 2)

	if code, _ := getPresence(t, f.base, "", "uids=pres-a"); code != http.StatusUnauthorized {
		t.Fatalf("without token: %d", code)
	}
	if code, _ := getPresence(t, f.base, testPushToken, "uids="); code != http.StatusBadRequest {
		t.Fatalf("no uids: %d", code)
	}
	if code, _ := getPresence(t, f.base, testPushToken, "uids="+strings.Repeat("x,", 1000)+"y"); code != http.StatusBadRequest {
		t.Fatalf("1,001 uids: %d", code)
	}
	code, out := getPresence(t, f.base, testPushToken, "uids=pres-a,pres-nobody&uids=pres-prober")
	if code != http.StatusOK || len(out.Users) != 3 {
		t.Fatalf("presence: %d %+v", code, out)
	}
	u := out.Users[0]
	if u.UID != "pres-a" || u.State != "online" || len(u.Devices) != 2 {
		t.Fatalf("pres-a: %+v", u)
	}
	nodes := map[string]string{a.NodeID(): "", b.NodeID(): ""}
	for _, d := range u.Devices {
		if _, ok := nodes[d.NodeID]; !ok || (d.Device != "phone" && d.Device != "laptop") {
			t.Errorf("device %+v: not where the clients are (%v)", d, nodes)
		}
		if at := time.UnixMilli(d.LoginAtMS); at.Before(start.Add(-time.Second)) || at.After(time.Now()) {
			t.Errorf("login time %v", at)
		}
	}
	if out.Users[1].UID != "pres-nobody" || out.Users[1].State != "offline" || len(out.Users[1].Devices) != 0 {
		t.Errorf("pres-nobody: %+v", out.Users[1])
	}
	if out.Users[2].UID != "pres-prober" || out.Users[2].State != "online" {
		t.Errorf("pres-prober: %+v", out.Users[2])
	}
	b.Close()
	waitFor(t, "the closed device gone from presence", 15*time.Second, func() bool {
		_, out := getPresence(t, f.base, testPushToken, "uids=pres-a")
		return len(out.Users) == 1 && len(out.Users[0].Devices) == 1 && out.Users[0].Devices[0].Device == "phone"
	})
}

func postKick(t *testing.T, base, token, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/kick", strings.NewReader(body))
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

// TestKickThroughTheDispatcher: POST /v1/kick reaches a user's devices on
// both real node processes; with ban the Go SDK stops for good (Err is a
// banned *KickedError), without it the SDK reconnects.
func TestKickThroughTheDispatcher(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	f := startFleet(t, "", "")
	var phone, laptop *client.Client
	// One device on each node: dial until the second lands elsewhere.
	phone = dialDevice(t, f.base, "kick-a", "phone")
	laptop, _ = dialElsewhere(t, f.base, phone.NodeID(), func(i int) (string, string) { return "kick-a", fmt.Sprintf("laptop-%d", i) })
	other := dialDevice(t, f.base, "kick-b", "phone")
	prober := dialDevice(t, f.base, "kick-prober", "phone")
	reachable(t, prober, "kick-a", 2)
	reachable(t, prober, "kick-b", 1)

	if code, _ := postKick(t, f.base, "", `{"uid":"kick-a"}`); code != http.StatusUnauthorized {
		t.Fatalf("without token: %d", code)
	}
	if code, _ := postKick(t, f.base, testPushToken, `{"device":"x"}`); code != http.StatusBadRequest {
		t.Fatalf("no uid: %d", code)
	}
	code, out := postKick(t, f.base, testPushToken, `{"uid":"kick-a","reason":"account suspended","ban":true}`)
	if code != http.StatusOK || out["kicked"] != float64(2) || out["incomplete"] != false || len(out["nodes"].([]any)) != 2 {
		t.Fatalf("kick: %d %v", code, out)
	}
	for _, c := range []*client.Client{phone, laptop} {
		select {
		case <-c.Done():
		case <-time.After(15 * time.Second):
			t.Fatal("a banned client is still running")
		}
		var ke *client.KickedError
		if !errors.As(c.Err(), &ke) || !ke.Banned() || ke.Detail != "account suspended" {
			t.Fatalf("Err: %v", c.Err())
		}
	}
	// Without ban the client comes back by itself.
	if code, out := postKick(t, f.base, testPushToken, `{"uid":"kick-b","reason":"re-login"}`); code != http.StatusOK || out["kicked"] != float64(1) {
		t.Fatalf("kick without ban: %d %v", code, out)
	}
	reachable(t, prober, "kick-b", 1)
	select {
	case <-other.Done():
		t.Fatalf("stopped after a kick without ban: %v", other.Err())
	default:
	}
}
