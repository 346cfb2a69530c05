package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/rs/zerolog"

	"github.com/imgate/imgate/proto/client"
	"github.com/imgate/imgate/proto/wirepb"
)

// Log in, send one message, print what arrives until the client stops.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{
		Dispatcher: "http://127.0.0.1:8080",
		UID:        "alice",
		Device:     "phone",
		Logger:     zerolog.New(os.Stderr).Level(zerolog.WarnLevel),
	})
	if err != nil {
		var de *client.DispatcherError
		if errors.As(err, &de) {
			log.Fatalf("dispatcher said %d %s: %s", de.Status, de.Code, de.Message)
		}
		log.Fatal(err)
	}
	defer c.Close()
	fmt.Println("connected to node", c.NodeID())

	res, err := c.Send(ctx, "bob", []byte("hello"), client.WithContentType("text/plain"))
	switch {
	case errors.Is(err, client.ErrConnectionLost):
		fmt.Println("outcome unknown:", err)
	case err != nil:
		fmt.Println("not sent:", err)
	case res.Outcome == wirepb.Outcome_OUTCOME_DELIVERED:
		fmt.Printf("delivered to %d/%d devices\n", res.Acked, res.Devices)
	default:
		fmt.Println(client.OutcomeName(res.Outcome), client.ErrorCodeName(res.Reason))
	}

	go func() {
		for e := range c.Events() {
			fmt.Println("event:", e)
		}
	}()
	for m := range c.Messages() {
		fmt.Printf("%s: %s\n", m.From, m.Payload)
	}
	fmt.Println("stopped:", c.Err())
}
