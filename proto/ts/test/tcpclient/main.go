// Command tcpclient is a Go SDK client (plain TCP) driven over stdin and
// stdout, for the TypeScript SDK tests that check that TCP and WebSocket
// clients talk to each other across nodes. It prints JSON lines:
//
//	{"event":"connected","node":"node-1"}                       once logged in
//	{"event":"message","id":…,"from":…,"payload":…,"node":…}    each message received
//	{"event":"sent","to":…,"outcome":"delivered","msg_id":…}    each Send's result
//
// and reads commands, one a line: `send <uid> <payload>`. It exits on
// stdin EOF (closing the client) or when the client stops.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/imgate/imgate/proto/client"
)

func main() {
	dispatcher := flag.String("dispatcher", "", "dispatcher base URL")
	uid := flag.String("uid", "", "user id")
	device := flag.String("device", "tcp", "device id")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	c, err := client.Dial(ctx, client.Config{Dispatcher: *dispatcher, UID: *uid, Device: *device, ClientVersion: "imgate-ts-test/tcpclient"})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "tcpclient:", err)
		os.Exit(1)
	}
	defer c.Close()
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	emit := func(v map[string]any) {
		mu.Lock()
		defer mu.Unlock()
		enc.Encode(v)
	}
	emit(map[string]any{"event": "connected", "node": c.NodeID()})
	go func() {
		for m := range c.Messages() {
			emit(map[string]any{"event": "message", "id": m.ID, "from": m.From, "payload": string(m.Payload), "node": m.NodeID})
		}
	}()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 3)
		if len(f) != 3 || f[0] != "send" {
			emit(map[string]any{"event": "error", "error": "unknown command"})
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		res, err := c.Send(ctx, f[1], []byte(f[2]), client.WithContentType("text/plain"))
		cancel()
		out := map[string]any{"event": "sent", "to": f[1], "outcome": client.OutcomeName(res.Outcome), "msg_id": res.MsgID, "node": res.NodeID}
		if err != nil {
			out["error"] = err.Error()
		}
		emit(out)
	}
}
